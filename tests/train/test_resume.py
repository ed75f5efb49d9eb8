"""Checkpoints: a run stopped by SIGTERM and resumed ends with exactly the weights of an
uninterrupted run; damaged checkpoints are refused with a clear error and never replace the last
good one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mambaverse.errors import ConfigError
from mambaverse.train import checkpoint, load_config, train
from mambaverse.train.checkpoint import CheckpointError

from .conftest import ROOT

# Dropout on (the model draws random numbers), two micro-batches per step, and 30 steps across
# an epoch boundary (45 batches of 32 per epoch: 23 steps, the last of one micro-batch).
RUN = ["model.name=toy_classifier_micro", "data.img_size=8", "model.dropout=0.2",
       "grad_accum_steps=2", "max_steps=30", "log_every=5", "eval.every_steps=10",
       "schedule.warmup_steps=4", "batch_size=32"]  # fmt: skip


def run(out, *overrides, resume=None):
    return train(load_config(None, [*RUN, f"output_dir={out}", *overrides]), resume=resume)


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def comparable(out):
    """Metrics without the wall-clock fields."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("samples_per_s", "train_seconds")} for r in records
    ]


@pytest.mark.parametrize(
    ("name", "logs"),
    [("SIGTERM", "log_every=5"), ("SIGINT", "log_every=5"), ("SIGTERM", "log_every=4")],
)  # SIGINT: a first Ctrl-C; log_every=4: the stop (step 10) falls between two log lines
def test_a_stop_signal_then_resume_equals_an_uninterrupted_run(
    toys, tmp_path, monkeypatch, name, logs
):
    run(tmp_path / "straight", logs)

    # A real signal, sent to this process by the model during micro-batch 19 (step 10's second).
    monkeypatch.setenv("TOY_SIGNAL_AT", "19")
    monkeypatch.setenv("TOY_SIGNAL", name)
    stopped = run(tmp_path / "resumed", logs)
    assert stopped["interrupted"] == name and stopped["step"] == 10
    assert stopped["batches_done"] == 20 and stopped["epoch"] == 0  # mid-epoch
    assert checkpoint.committed(tmp_path / "resumed") == [
        tmp_path / "resumed" / "checkpoints" / "step-00000010"
    ]
    assert not (tmp_path / "resumed" / "model").exists()

    monkeypatch.delenv("TOY_SIGNAL_AT")
    finished = run(tmp_path / "resumed", logs, resume="latest")
    assert finished["steps"] == 30
    assert_same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "straight"))
    # The resumed log continues the interrupted one: the same records as the straight run's.
    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "straight")


def test_cli_run_stopped_by_an_outside_sigterm_saves_and_resumes(toys, tmp_path):
    """`mambaverse train` in a subprocess, sent SIGTERM from outside at whatever step it is on."""
    out = tmp_path / "cli"
    process = subprocess.Popen(
        [sys.executable, "-m", "mambaverse", "train", *RUN, f"output_dir={out}", "log_every=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "TOY_STEP_SECONDS": "0.2"},
    )  # fmt: skip
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    step = int(stdout.split("stopped by SIGTERM at step ")[1].split("/")[0])
    assert 2 <= step < 30
    assert checkpoint.committed(out) == [out / "checkpoints" / f"step-{step:08d}"]

    run(out, "log_every=1", resume="latest")
    run(tmp_path / "straight")
    assert_same_weights(weights(out), weights(tmp_path / "straight"))


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def two_checkpoints(toys, tmp_path):
    out = tmp_path / "run"
    run(out, "max_steps=10", "checkpoint.every_steps=5", "eval.every_steps=null")
    older, newer = checkpoint.committed(out)
    assert (older.name, newer.name) == ("step-00000005", "step-00000010")
    return out, older, newer


@pytest.mark.parametrize(
    ("harm", "reason"),
    [
        ("truncate", r"model.safetensors has \d+ bytes, expected \d+ \(truncated or overwritten\)"),
        ("flip", r"optimizer.bin does not match its SHA-256 in manifest.json \(corrupted\)"),
        ("unfinished", r"it has no manifest.json \(the save did not finish\)"),
        ("lost", r"trainer_state.json is missing"),
    ],
)
def test_a_damaged_checkpoint_is_refused_and_the_good_one_kept(two_checkpoints, harm, reason):
    out, older, newer = two_checkpoints
    if harm == "truncate":
        data = (newer / "model.safetensors").read_bytes()
        (newer / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif harm == "flip":
        data = bytearray((newer / "optimizer.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newer / "optimizer.bin").write_bytes(bytes(data))
    elif harm == "unfinished":
        (newer / "manifest.json").unlink()
    else:
        (newer / "trainer_state.json").unlink()
    good, bad = digest(older), digest(newer)

    with pytest.raises(CheckpointError) as err:
        run(out, "max_steps=15", "checkpoint.every_steps=5", resume="latest")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {newer} is damaged: ")
    assert __import__("re").search(reason, message)
    assert message.endswith(
        f"the newest intact checkpoint is {older}: resume from it with --resume {older}"
    )
    assert digest(older) == good and digest(newer) == bad  # nothing was written or removed

    # Going back to the good one works; the damaged copy is set aside, never read again.
    summary = run(out, "max_steps=15", "checkpoint.every_steps=5", resume=str(older))
    assert summary["steps"] == 15
    assert [p.name for p in checkpoint.committed(out)] == ["step-00000010", "step-00000015"]
    assert checkpoint.damage(out / "checkpoints" / "step-00000010") is None


@pytest.mark.parametrize("every", ["10", "null"])  # null: the final evaluation follows the save
def test_resuming_a_finished_run_reports_its_result_and_writes_nothing_twice(toys, tmp_path, every):
    out = tmp_path / "done"
    first = run(out, "checkpoint.every_steps=10", f"eval.every_steps={every}")
    before = comparable(out)
    tests = [r["step"] for r in before if r["split"] == "test"]
    assert tests == ([10, 20, 30] if every == "10" else [23, 30])  # null: each epoch and the end

    again = run(out, "checkpoint.every_steps=10", f"eval.every_steps={every}", resume="latest")
    assert comparable(out) == before  # step 30's test line is not written a second time
    for key in ("steps", "test_accuracy", "test_loss", "test_samples"):
        assert again[key] == first[key], key


@pytest.mark.parametrize("given", ["step-00000010", "elsewhere/step-00000010"])
def test_a_resume_path_that_does_not_exist_names_the_run_s_checkpoints(two_checkpoints, given):
    # A bare name or a typo: the way out is found in the run's output_dir, not beside the path.
    out, _, newer = two_checkpoints
    with pytest.raises(CheckpointError) as err:
        run(out, "max_steps=15", "checkpoint.every_steps=5", resume=given)
    assert str(err.value) == (
        f"checkpoint {given} does not exist; the newest intact checkpoint is {newer}: "
        f"resume from it with --resume {newer}"
    )


def test_a_save_that_fails_leaves_the_last_good_checkpoint(two_checkpoints, monkeypatch):
    out, older, newer = two_checkpoints
    good = digest(newer)

    def disk_full(directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(out, "max_steps=15", "checkpoint.every_steps=5", resume="latest")
    assert checkpoint.committed(out) == [older, newer] and digest(newer) == good
    monkeypatch.undo()
    assert run(out, "max_steps=15", "checkpoint.every_steps=5", resume="latest")["steps"] == 15


def test_a_fresh_run_over_an_earlier_one_without_checkpoints_says_it_replaces_it(
    toys, tmp_path, capsys
):
    out = tmp_path / "run"
    run(out, "max_steps=2")
    assert "holds an earlier run" not in capsys.readouterr().out
    (out / "summary.json").unlink()  # as an interrupted run leaves it: metrics, no summary
    run(out, "max_steps=3")
    assert f"{out} holds an earlier run; its metrics, plot and model are replaced" in (
        capsys.readouterr().out
    )
    fresh = tmp_path / "fresh"
    run(fresh, "max_steps=3")

    def logged(directory):
        return [json.loads(line)["step"] for line in (directory / "metrics.jsonl").open()]

    assert logged(out) == logged(fresh)  # only the second run's lines


def test_fresh_runs_and_resumes_without_checkpoints_are_refused(toys, tmp_path):
    with pytest.raises(
        CheckpointError, match=r"--resume: no checkpoint in .*; start without --resume"
    ):
        run(tmp_path / "empty", resume="latest")
    out = tmp_path / "run"
    run(out, "max_steps=3", "checkpoint.every_steps=3")
    with pytest.raises(
        ConfigError, match=r"holds checkpoints of an earlier run .*continue it with --resume"
    ):
        run(out, "max_steps=3")


def test_when_no_checkpoint_is_intact_both_ways_out_lead_somewhere(two_checkpoints):
    out, older, newer = two_checkpoints
    (older / "manifest.json").unlink()
    (newer / "manifest.json").unlink()
    with pytest.raises(CheckpointError) as err:
        run(out, "max_steps=15", resume="latest")
    assert str(err.value).endswith(
        f"no intact checkpoint is in {out / 'checkpoints'}; to start again, delete that "
        "directory or choose another output_dir"
    )
    with pytest.raises(ConfigError) as err:  # not "continue it with --resume": that cannot work
        run(out, "max_steps=15")
    assert "none of them intact (step-00000010: it has no manifest.json" in str(err.value)
    assert f"delete {out / 'checkpoints'} or choose another output_dir" in str(err.value)


@pytest.mark.parametrize("given", ["run", "run/checkpoints"])
def test_resume_from_a_run_directory_means_its_newest_checkpoint(two_checkpoints, given):
    out, _, newer = two_checkpoints
    assert checkpoint.resolve("elsewhere", str(out.parent / given)) == newer
    summary = run(out, "max_steps=15", "checkpoint.every_steps=5", resume=str(out.parent / given))
    assert summary["steps"] == 15


def test_an_output_dir_that_is_a_file_is_refused(toys, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"output_dir: .*afile is a file, not a directory"):
        run(tmp_path / "afile")


def test_loading_a_run_or_its_checkpoint_as_a_model_says_where_the_model_is(two_checkpoints):
    from mambaverse import load_pretrained

    out, _, newer = two_checkpoints
    with pytest.raises(ConfigError, match=rf"it is a training run: its model is {out / 'model'}"):
        load_pretrained(out)
    with pytest.raises(ConfigError) as err:
        load_pretrained(newer)
    assert str(err.value).endswith(
        f"it is a training checkpoint, for `mambaverse train --resume {newer}`; the run's "
        f"model is {out / 'model'}"
    )


def test_a_model_directory_holding_other_files_is_refused_before_training(toys, tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a saved model \(notes.txt\)"):
        run(tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step
