"""Training through the shared loop (`mambaverse train`): every tower kind, and the digits demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mambaverse
from mambaverse.errors import InputError
from mambaverse.plugins.cobra.data import DIGIT_QUESTION, DIGIT_WORDS, write_digit_images
from mambaverse.train import load_config, train

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples/configs/cobra_digits.yaml"


def named_digits(captions: list[str], labels: list[int]) -> float:
    """The fraction of captions naming exactly the right digit (and no other)."""
    right = 0
    for caption, label in zip(captions, labels):
        named = [w for w in caption.lower().replace(".", " ").split() if w in DIGIT_WORDS]
        right += named == [DIGIT_WORDS[label]]
    return right / len(labels)


@pytest.mark.parametrize("tower", ["timm:vit_tiny_patch16_224", "open_clip:ViT-S-32", "vim_micro"])
def test_the_same_config_trains_with_each_kind_of_tower(tower, tmp_path):
    overrides = [
        f"model.towers=[{tower}]",  # the only line that changes
        "model.img_size=32",
        "data.img_size=32",
        "max_steps=2",
        "batch_size=4",
        "eval.batch_size=64",
        "log_every=1",
        f"output_dir={tmp_path}",
    ]
    config = load_config(DEMO_CONFIG, overrides)
    config.data.__pydantic_extra__["style"] = "question"  # fewer rows to evaluate
    summary = train(config, source="test")
    assert summary["steps"] == 2 and summary["test_samples"] == 360
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    model = mambaverse.load_pretrained(summary["model_dir"])
    assert [t.name for t in model.towers.towers] == [tower]


def test_rows_too_long_for_the_model_are_named_before_training(tmp_path):
    """A row whose image and text tokens exceed max_length stops the run before its first step,
    naming the file and line (not a traceback from the middle of training)."""
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "red"}] * 3
    rows.insert(1, {"image": "a.png", "caption": "very red " * 200})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_config(
        DEMO_CONFIG,
        ["data.name=vlm_jsonl", f"data.path={path}", "data.img_size=16", "data.test_path=" + str(path),
         "model.img_size=16", "max_steps=1", f"output_dir={tmp_path / 'out'}"],
    )  # fmt: skip
    for key in [
        k for k in config.data.__pydantic_extra__ if k not in ("path", "img_size", "test_path")
    ]:
        del config.data.__pydantic_extra__[key]  # the digits options
    with pytest.raises(InputError, match=rf"1 train row\(s\) longer .*{path.name}:2: \d+ image"):
        train(config, source="test")
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_training_on_the_digits_learns_to_name_them(tmp_path):
    """A short run of the demo config on the question rows: the answers name the digit far
    above chance (10 %). (The full demo, captions included, is the slow test below.)"""
    overrides = ["max_steps=200", "data.style=question", "schedule.warmup_steps=20"]
    overrides += [f"output_dir={tmp_path}", "eval.every_steps=1000"]
    summary = train(load_config(DEMO_CONFIG, overrides), source="test")
    model = mambaverse.load_pretrained(summary["model_dir"]).eval()
    written = write_digit_images(tmp_path / "test_images", "test")[::2]
    answers = model.generate([str(p) for p, _ in written], DIGIT_QUESTION, max_new_tokens=4)
    accuracy = named_digits(answers, [label for _, label in written])
    assert accuracy > 0.3, answers[:5]


@pytest.mark.slow
def test_the_digits_demo_names_90_percent_of_held_out_digits(tmp_path):
    """The documented demo: `mambaverse train` with the config, then `mambaverse caption`."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as measured in docs/vlm.md
    result = subprocess.run(
        [sys.executable, "-m", "mambaverse", "train", str(DEMO_CONFIG), f"output_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=1800, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    written = write_digit_images(tmp_path / "test_images", "test")
    result = subprocess.run(
        [sys.executable, "-m", "mambaverse", "caption", "--checkpoint", summary["model_dir"],
         *[str(p) for p, _ in written], "--batch-size", "120"],
        capture_output=True, text=True, cwd=ROOT, timeout=1800, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    captions = [line.split("\t", 1)[1] for line in result.stdout.splitlines()]
    assert len(captions) == len(written) == 360
    accuracy = named_digits(captions, [label for _, label in written])
    print(f"train seconds {summary['train_seconds']:.0f}, held-out digits named: {accuracy:.1%}")
    assert accuracy >= 0.9
