"""Two gloo processes on the CPU train on disjoint shards, only the main process writes the run's
files, and evaluation gathered from both covers the test split exactly once.

accelerate 1.15 starts one process for `accelerate launch --cpu --num_processes 2` (several CPU
processes need mpirun there); `--multi_gpu` with ACCELERATE_USE_CPU=1 starts two through torchrun,
and accelerate then joins them with gloo, as on a machine without GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch

import mambaverse
from mambaverse.train.config import DataSection
from mambaverse.train.data import build_dataset

from .conftest import ROOT
from .toy_models import fingerprint

# 1797 digits with test_fraction 0.1985 -> 357 test images (an odd count: the last evaluation
# batch is uneven across processes) and 1440 train images = 2 processes x 45 batches of 16, so
# the training shards need no padding and must be disjoint.
DATA = ["data.img_size=8", "data.test_fraction=0.1985", "batch_size=16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(toys, tmp_path):
    splits = build_dataset(
        DataSection(name="digits", img_size=8, test_fraction=0.1985), "vision", "t"
    )
    assert (len(splits.train), len(splits.test)) == (1440, 357)
    out, seen = tmp_path / "run", tmp_path / "seen"
    seen.mkdir()
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()),
         "-m", "mambaverse", "train", "model.name=toy_classifier_micro", *DATA, "epochs=1",
         "checkpoint.every_steps=40", f"output_dir={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "TOY_RECORD_DIR": str(seen)},
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]

    # Disjoint shards that together are the training split, each sample seen once.
    shards = [Counter((seen / f"rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert sum(shards[0].values()) == sum(shards[1].values()) == 720
    assert not set(shards[0]) & set(shards[1])
    expected = Counter(fingerprint(splits.train[i]["images"]) for i in range(len(splits.train)))
    assert shards[0] + shards[1] == expected

    # Only the main process wrote the run's files: one copy of each, one line per record. (Each
    # process writes its own RNG state into the shared checkpoint.)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "config.yaml", "metrics.jsonl", "metrics.png", "model", "summary.json",
    ]  # fmt: skip
    ckpt = out / "checkpoints" / "step-00000040"
    assert sorted(p.name for p in ckpt.glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)) and keys[-1] == (45, "test")
    assert launched.stdout.count("test accuracy") == 1

    # The gathered evaluation is the whole test split exactly once: it matches the saved model
    # scored here on all 357 images.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_samples"] == 357 and summary["processes"] == 2
    model = mambaverse.load_pretrained(out / "model").eval()
    images = torch.stack([splits.test[i]["images"] for i in range(357)])
    labels = torch.stack([splits.test[i]["labels"] for i in range(357)])
    with torch.no_grad():
        logits = model(images)
    assert summary["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5
    )
    assert summary["test_accuracy"] == pytest.approx(
        (logits.argmax(-1) == labels).float().mean().item()
    )
