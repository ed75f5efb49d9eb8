"""Every suite end to end at its --smoke size on the CPU: the command runs, the JSON holds every
point with the figures the docs quote, and the plot is written. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mambaverse.cli import main


def run_suite(suite: str, out: Path, *extra: str) -> dict:
    assert main(["bench", suite, "--smoke", "--device", "cpu", "--out", str(out), *extra]) == 0
    assert (out / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / f"{suite}.json").read_text())
    assert record["command"].startswith(f"mambaverse bench {suite} --smoke")
    assert record["date"] and record["device"].startswith("CPU")
    return record


def test_scaling(tmp_path: Path) -> None:
    record = run_suite("scaling", tmp_path, "--gen-tokens", "2")
    labels = ["Mamba", "Mamba-2", "hybrid (ma)", "Transformer (sdpa)"]
    train = record["training"]
    assert [(r["model"], r["length"]) for r in train] == [(m, n) for m in labels for n in (32, 64)]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in train)
    assert all(r["tokens_per_s_back_to_back"] > 0 for r in train)
    # batch = tokens_per_batch // length, at least 1
    assert [r["batch"] for r in train[:2]] == [2, 1]

    gen = {(r["model"], r["batch"], r["context"]): r for r in record["generation"]}
    assert len(gen) == 4 * 2 * 2 and all(r["status"] == "ok" for r in gen.values())
    for batch in (1, 2):
        # SSM decoding state: the same size whatever the context
        for model in ("Mamba", "Mamba-2"):
            assert gen[model, batch, 16]["state_bytes"] == gen[model, batch, 32]["state_bytes"]
        # KV cache: 2 (k, v) × layers × batch × heads × (context + 2 warm-up + 2 new) × head_dim × 4 B
        for context in (16, 32):
            expected = 2 * 2 * batch * 1 * (context + 2 + 2) * 64 * 4
            assert gen["Transformer (sdpa)", batch, context]["state_bytes"] == expected


def test_vision(tmp_path: Path) -> None:
    record = run_suite("vision", tmp_path)
    rows = record["rows"]
    models = ["vim_micro", "deit_tiny (sdpa)", "deit_tiny (explicit)"]
    assert [(r["model"], r["resolution"]) for r in rows] == [
        (m, px) for px in (32, 64) for m in models
    ]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in rows)
    # the two DeiT variants are the same network: same parameters
    by = {(r["model"], r["resolution"]): r for r in rows}
    assert by["deit_tiny (sdpa)", 64]["params"] == by["deit_tiny (explicit)", 64]["params"]
    assert {(r["against"], r["resolution"]) for r in record["ratios"]} == {
        (m, px) for m in models[1:] for px in (32, 64)
    }


def test_generation(tmp_path: Path) -> None:
    rows = run_suite("generation", tmp_path)["rows"]
    # On the CPU there is no CUDA graph row: Cobra decodes eagerly, as the Transformer.
    assert [r["model"] for r in rows] == [
        "cobra_tiny (mamba_micro), eager",
        "same towers + Transformer (sdpa), eager",
    ]
    assert all(r["status"] == "ok" and r["answer_tokens_per_s"] > 0 for r in rows)
    # same towers: the same image tokens feed both language models
    assert rows[0]["image_tokens"] == rows[1]["image_tokens"] > 0


def test_synthetic(tmp_path: Path) -> None:
    record = run_suite("synthetic", tmp_path, "--models", "mamba,transformer")
    results = record["results"]
    assert {(r["task"], r["model"], r["length"]) for r in results} == {
        (t, m, n)
        for t in ("induction_heads", "selective_copying")
        for m in ("Mamba", "MHA-RoPE")
        for n in (16, 32)
    }
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["samples"] == 8 for r in results)
    assert all(t["steps_run"] == 3 for t in record["training"])
    # the paper's learning rates (appendix E.1): 1e-3 for Mamba, 2e-4 for attention
    assert {t["model"]: t["lr"] for t in record["training"]} == {"Mamba": 1e-3, "MHA-RoPE": 2e-4}


def test_unknown_suite_names_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "scalng"]) == 2
    assert "did you mean 'scaling'?" in capsys.readouterr().err
    assert main(["bench", "zzz"]) == 2
    assert "kernels, scaling, vision, generation, synthetic" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kernels", "--device", "foo"], "--device foo: not a device; use cpu or cuda"),
        (["vision", "--pairs", "vim_micro=deit_tinyy"], "did you mean 'deit_tiny_patch16_224'"),
        (["vision", "--pairs", "vim_micro"], "'vim_micro' is not PRESET=TIMM_MODEL"),
        (["vision", "--resolutions", "30"], "--resolutions 30: vim: image size 30×30 is not"),
        (["generation", "--preset", "vim_micro"], "--preset vim_micro: not a Cobra VLM"),
        (["synthetic", "--tasks", "inductin"], "did you mean 'induction_heads'?"),
        (["scaling", "--device", "cpu", "--cuda-graph"], "CUDA graphs need a CUDA device"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_any_timing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", argv[0], "--smoke", "--out", str(tmp_path), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambaverse bench: error: ") and message in err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


def test_suite_options_include_out() -> None:
    from mambaverse.bench import suite_parser

    args = suite_parser("synthetic").parse_args(["--smoke", "--out", "x"])
    assert args.out == "x" and args.smoke


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
