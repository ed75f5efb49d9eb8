"""`mambaverse train` on the command line, and the real models through the loop."""

from __future__ import annotations

import json
import time

import pytest

from mambaverse.train import load_config, train

from .conftest import run_cli


def test_help_lists_the_arguments():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for word in ("CONFIG", "key=value", "--resume"):
        assert word in result.stdout


def test_bad_override_is_a_one_line_error_with_exit_code_2(tmp_path):
    result = run_cli("train", "optim.lrr=1e-3", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mambaverse train: error: defaults + overrides: optim: unknown key 'lrr' (did you mean "
        "'lr'?); valid keys: betas, clip_grad_norm, eps, lr, weight_decay"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("vim_micro", ["data.name=digits"]),
        ("mamba_micro", ["data.name=induction_heads", "data.seq_len=16", "data.test_samples=32"]),
    ],
)
def test_registered_models_train_a_few_steps(tmp_path, model, data):
    summary = train(
        load_config(None, [f"model.name={model}", *data, "max_steps=3", f"output_dir={tmp_path}"])
    )
    assert summary["steps"] == 3 and summary["test_loss"] > 0
    assert (
        json.loads((tmp_path / "model" / "config.json").read_text())["mambaverse"]["model"] == model
    )


@pytest.mark.slow
def test_the_default_job_reaches_95_percent_in_five_minutes(tmp_path):
    """The README's first command: `mambaverse train` with no arguments (measured on 2 cores)."""
    start = time.monotonic()
    result = run_cli("train", f"output_dir={tmp_path}", timeout=600)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "vim_micro" and summary["test_samples"] == 360
    assert summary["test_accuracy"] >= 0.95
    assert seconds < 300


@pytest.mark.parametrize(
    ("argv", "resume", "max_steps"),
    [
        (["--resume", "{cfg}", "max_steps=3"], "latest", 3),  # --resume took the config
        (["{cfg}", "--resume", "max_steps=4"], "latest", 4),  # ... or an override
        (["--resume", "max_steps=5"], "latest", 5),
        (["{cfg}", "--resume", "runs/x/checkpoints/step-00000010"], "runs/x/checkpoints/step-00000010", 7),
        (["{cfg}", "max_steps=2"], None, 2),
        (["--resume", "max_steps=5", "max_steps=9"], "latest", 9),  # the last override wins
        (["max_steps=9", "--resume", "max_steps=5"], "latest", 5),
        (["--resume", "{tmp}/lr=0.001"], "{tmp}/lr=0.001", 7),  # an existing path is a path
    ],
)  # fmt: skip
def test_resume_never_swallows_the_config_or_an_override(
    tmp_path, monkeypatch, argv, resume, max_steps
):
    import mambaverse.train.loop as loop
    from mambaverse.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_steps: 7\n")
    (tmp_path / "lr=0.001").mkdir()
    seen = {}
    monkeypatch.setattr(loop, "train", lambda config, resume, source: seen.update(
        max_steps=config.max_steps, resume=resume, source=source) or {})  # fmt: skip
    words = [a.format(cfg=cfg, tmp=tmp_path) for a in argv]
    if "{tmp}" in argv[-1]:  # a config is needed besides: the default one's max_steps is not 7
        words = [str(cfg), *words]
    assert main(["train", *words]) == 0
    expected = resume if resume is None else resume.format(tmp=tmp_path)
    assert (seen["resume"], seen["max_steps"]) == (expected, max_steps)


def test_a_config_given_twice_through_resume_is_refused(tmp_path, capsys):
    from mambaverse.cli import main

    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("max_steps: 7\n")
    code = main(["train", str(tmp_path / "a.yaml"), "--resume", str(tmp_path / "b.yaml")])
    assert code == 2
    assert "two config files" in capsys.readouterr().err
