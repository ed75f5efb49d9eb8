"""``mambaverse bench kernels``: its CPU behaviour, its table and plot, and one quick GPU run."""

from __future__ import annotations

import json

import pytest
import torch

from mambaverse.bench import kernels as suite
from mambaverse.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_without_cuda_says_why(capsys):
    assert main(["bench", "kernels", "--quick"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_table_and_plot_show_every_row(tmp_path, capsys):
    rows = [
        suite.Row(
            "selective_scan",
            "b1 l8",
            "fwd",
            "triton",
            0.5,
            1200.0,
            "GB/s",
            {"of copy bandwidth": 0.4},
        ),
        suite.Row("attention", "b1 l8", "fwd+bwd", "sdpa-flash", 2.0, 300.0, "TFLOP/s"),
    ]
    suite.print_table(rows)
    out = capsys.readouterr().out
    assert "0.40 of copy bandwidth" in out and "sdpa-flash" in out and "300 TFLOP/s" in out
    suite.plot(rows, tmp_path / "kernels.png")
    assert (tmp_path / "kernels.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_quick_run_writes_json(tmp_path):
    assert (
        main(["bench", "kernels", "--quick", "--ops", "selective_scan", "--out", str(tmp_path)])
        == 0
    )
    record = json.loads((tmp_path / "kernels.json").read_text())
    assert record["ceilings"]["copy GB/s"] > 0
    triton_fwd = next(r for r in record["rows"] if r["impl"] == "triton" and r["pass_"] == "fwd")
    assert triton_fwd["ratios"]["x faster than torch loop"] > 1
