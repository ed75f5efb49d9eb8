"""``mambaverse bench kernels``: the smoke run of every op (Triton interpreted on the CPU), its
table and plot, bad options, and one quick GPU run. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mambaverse.bench import kernels as suite
from mambaverse.cli import main
from tests.kernels.triton_helpers import DEVICE, INTERPRETED, run_interpreted, tiny

# The peers every smoke run measures beside ours on this device. On CUDA the SSD peer (mamba_ssm's
# Triton kernel) joins when a copy of mamba_ssm is found (--peer-path), and SDPA's cuDNN backend
# where this GPU and cuDNN offer it.
OPTIONAL_PEERS = {suite.PEER_SSD, "sdpa-cudnn"}
PEERS_HERE = {
    "selective_scan": {"reference", "torch loop"},
    "ssd_scan": set(),
    "attention": {"sdpa-flash"} if DEVICE == "cuda" else {"sdpa"},
    "causal_conv1d": {"reference"},
    "gated_rms_norm": {"reference"},
    "apply_rotary": {"reference"},
    "cross_entropy": {"reference"},
}


def smoke(out: Path, device: str, *extra: str) -> dict:
    argv = ["bench", "kernels", "--smoke", "--device", device, "--out", str(out), *extra]
    assert main(argv) == 0
    assert (out / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "kernels.json").read_text())
    assert record["command"].startswith("mambaverse bench kernels --smoke")
    assert record["ceilings"]["copy GB/s"] > 0 and record["ceilings"]["matmul TFLOP/s"] > 0
    return record


@tiny
def test_smoke_runs_every_implementation(tmp_path):
    record = smoke(tmp_path, DEVICE)
    rows = record["rows"]
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["achieved"] > 0 for r in rows), rows
    for op, peers in PEERS_HERE.items():
        impls = {r["impl"] for r in rows if r["op"] == op}
        assert impls - OPTIONAL_PEERS == {"triton"} | peers, op
        for impl in impls:  # both passes of each, but the loop (forward only)
            passes = {r["pass_"] for r in rows if r["op"] == op and r["impl"] == impl}
            assert passes == ({"fwd"} if impl == "torch loop" else {"fwd", "fwd+bwd"})
    # the scan in both layouts, the attention causal and not
    shapes = {r["shape"] for r in rows if r["impl"] == "triton"}
    assert {s.split()[-1] for s in shapes if "n4" in s} == {"contiguous", "block"}
    assert any("causal" in s for s in shapes) and any("full" in s for s in shapes)
    scan_fwd = next(r for r in rows if r["impl"] == "triton" and r["pass_"] == "fwd")
    assert set(scan_fwd["ratios"]) == {
        "of copy bandwidth",
        "x faster than torch loop",
        "x faster than reference",
    }


@pytest.mark.skipif(INTERPRETED, reason="checks the run without the Triton interpreter")
def test_cpu_smoke_without_interpreter_names_the_way_out(tmp_path, capsys):
    rows = smoke(tmp_path, "cpu", "--ops", "selective_scan,attention")["rows"]
    assert {r["op"] for r in rows} == {"selective_scan", "attention"}
    triton = [r for r in rows if r["impl"] == "triton"]
    assert triton and all(r["status"].startswith("skipped") and r["ms"] is None for r in triton)
    assert "TRITON_INTERPRET=1" in triton[0]["status"]
    assert all(r["status"] == "ok" for r in rows if r["impl"] != "triton")
    assert "TRITON_INTERPRET=1" in capsys.readouterr().out  # the table shows the reason


def test_interpreted():
    run_interpreted(__file__)


def test_rates_and_ratios_from_the_times(monkeypatch):
    """With every time fixed (2 ms per timed call, 10 ms for the loop), the rows carry the
    counts of the module docstring: bytes / time, FLOPs / time, and ratios of times."""
    monkeypatch.setattr(suite.Bench, "median_ms", lambda self, fn: 2.0)
    monkeypatch.setattr(suite.Bench, "few_calls_ms", lambda self, fn: 10.0)
    bench = suite.Bench(torch.device(DEVICE), torch.bfloat16, suite.SMOKE)
    # keyed by the layout (scan) or the masking (attention), pass and implementation
    rows = {(r.op, r.shape.split()[-1], r.pass_, r.impl): r
            for r in suite.bench_selective_scan(bench, copy_gbs=100.0)}  # fmt: skip
    rows |= {(r.op, r.shape.split()[-2], r.pass_, r.impl): r for r in suite.bench_attention(bench)}
    # b1 d8 n4 l24 in bf16: u, δ, z (b, d, l) and B, C (b, n, l) in, y (b, d, l) out
    big, small = 1 * 8 * 24 * 2, 1 * 4 * 24 * 2
    fwd_bytes = 4 * big + 2 * small
    both_bytes = fwd_bytes + 7 * big + 4 * small  # + dy in; du, dδ, dz, dB, dC out
    ref = rows["selective_scan", "contiguous", "fwd", "reference"]
    assert ref.ms == 2.0 and ref.achieved == pytest.approx(fwd_bytes / 2.0 / 1e6)
    both = rows["selective_scan", "contiguous", "fwd+bwd", "reference"]
    assert both.achieved == pytest.approx(both_bytes / 2.0 / 1e6)
    assert rows["selective_scan", "contiguous", "fwd", "torch loop"].ms == 10.0
    # attention b2 h2 l24 d32: 4·b·h·l²·d forward FLOPs, half when causal, ×3.5 with backward
    flops = 4 * 2 * 2 * 24 * 24 * 32
    peer = "sdpa-flash" if DEVICE == "cuda" else "sdpa"
    assert rows["attention", "full", "fwd", peer].achieved == pytest.approx(flops / 2.0 / 1e9)
    causal_both = rows["attention", "causal", "fwd+bwd", peer].achieved
    assert causal_both == pytest.approx(3.5 * flops / 2 / 2.0 / 1e9)
    triton = rows.get(("selective_scan", "contiguous", "fwd", "triton"))
    if triton is not None and triton.status == "ok":  # where Triton runs (CUDA, interpreter)
        assert triton.ratios == pytest.approx(
            {
                "of copy bandwidth": fwd_bytes / 2.0 / 1e6 / 100.0,
                "x faster than torch loop": 5.0,
                "x faster than reference": 1.0,
            }
        )
        fwd_bwd_row = rows["selective_scan", "contiguous", "fwd+bwd", "triton"]
        assert fwd_bwd_row.ratios["fwd+bwd / fwd time"] == 1.0
    # the gated norm at b1 l5 d12 in bf16: x, z in, y out; backward + dy, x, z in, dx, dz out
    norm = {(r.pass_, r.impl): r for r in suite.bench_gated_rms_norm(bench, copy_gbs=100.0)}
    one = 1 * 5 * 12 * 2
    assert norm["fwd", "reference"].achieved == pytest.approx(3 * one / 2.0 / 1e6)
    assert norm["fwd+bwd", "reference"].achieved == pytest.approx(8 * one / 2.0 / 1e6)
    # the rotary embedding of q at b2 h2 l7 d6 in bf16, x in the projection's layout: x in,
    # out; backward + dout in, dx out
    rotary = {(r.pass_, r.impl): r for r in suite.bench_apply_rotary(bench, copy_gbs=100.0)}
    one = 2 * 2 * 7 * 6 * 2
    assert rotary["fwd", "reference"].achieved == pytest.approx(2 * one / 2.0 / 1e6)
    assert rotary["fwd+bwd", "reference"].achieved == pytest.approx(4 * one / 2.0 / 1e6)
    assert rotary["fwd", "reference"].shape == "b2 h2 l7 d6 bf16"
    # the loss of (6, 21) bf16 logits: logits in; backward + logits in, their gradient out
    loss = {(r.pass_, r.impl): r for r in suite.bench_cross_entropy(bench, copy_gbs=100.0)}
    one = 6 * 21 * 2
    assert loss["fwd", "reference"].achieved == pytest.approx(one / 2.0 / 1e6)
    assert loss["fwd+bwd", "reference"].achieved == pytest.approx(3 * one / 2.0 / 1e6)
    assert loss["fwd", "reference"].shape == "n6 v21 bf16"


def test_unknown_op_names_the_nearest(capsys):
    assert main(["bench", "kernels", "--smoke", "--ops", "selective_scna"]) == 2
    assert "did you mean 'selective_scan'?" in capsys.readouterr().err


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
        suite.Row(
            "attention", "b1 l8", "fwd", "triton", None, None, "TFLOP/s", status="skipped: x"
        ),
    ]
    suite.print_table(rows)
    out = capsys.readouterr().out
    assert "0.40 of copy bandwidth" in out and "sdpa-flash" in out and "300 TFLOP/s" in out
    assert "skipped: x" in out
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
    assert set(triton_fwd["ratios"]) == {
        "of copy bandwidth",
        "x faster than torch loop",
        "x faster than reference",
    }
    assert all(value > 0 for value in triton_fwd["ratios"].values())
