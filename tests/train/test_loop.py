"""The training loop on tiny models: outputs, reloadable weights, gradient accumulation, freezing,
and every task's path through it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mambaverse
from mambaverse.errors import ConfigError
from mambaverse.train import load_config, train
from mambaverse.train.config import DataSection
from mambaverse.train.data import build_dataset

DIGITS = [
    "model.name=toy_classifier_micro",
    "data.img_size=8",
    "batch_size=32",
    "schedule.warmup_steps=0",
]


def run(tmp_path, *overrides, name="run", base=DIGITS):
    """Train in this process: the toy classifier on digits unless ``base`` says otherwise."""
    return train(load_config(None, [*base, f"output_dir={tmp_path / name}", *overrides]))


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_a_run_writes_metrics_a_plot_and_weights_that_reload(toys, tmp_path, capsys):
    summary = run(tmp_path, "epochs=2", "optim.lr=3e-3", "log_every=5")
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "metrics.jsonl", "metrics.png", "model", "summary.json",
    ]  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    tests = [r for r in records if r["split"] == "test"]
    assert train_steps == [*range(5, 90, 5), 90]  # 2 epochs of ceil(1437 / 32) = 45 steps
    assert [r["step"] for r in tests] == [45, 90] and all(r["samples"] == 360 for r in tests)
    assert records[-2]["loss"] < records[0]["loss"]
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary

    # The reported accuracy is the reloaded model's, computed here independently.
    model = mambaverse.load_pretrained(out / "model").eval()
    test = build_dataset(DataSection(name="digits", img_size=8), "vision", "test").test
    images = torch.stack([test[i]["images"] for i in range(len(test))])
    labels = torch.stack([test[i]["labels"] for i in range(len(test))])
    with torch.no_grad():
        logits = model(images)
    assert summary["test_accuracy"] == pytest.approx(
        (logits.argmax(-1) == labels).float().mean().item()
    )
    assert summary["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5
    )
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith(f"test accuracy {summary['test_accuracy']:.2%}")


def test_gradient_accumulation_equals_the_larger_batch(toys, tmp_path):
    common = ["model.dropout=0.0", "max_steps=12", "optim.clip_grad_norm=0.5"]
    run(tmp_path, *common, "batch_size=64", name="big")
    run(tmp_path, *common, "batch_size=32", "grad_accum_steps=2", name="accumulated")
    big, accumulated = weights(tmp_path / "big"), weights(tmp_path / "accumulated")
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6)
    untrained = weights_of_fresh_model()
    assert not torch.allclose(big["head.weight"], untrained["head.weight"])


def weights_of_fresh_model(**overrides):
    torch.manual_seed(0)  # the run's seed: the same initial weights
    model = mambaverse.create_model("toy_classifier_micro", img_size=8, in_chans=1, **overrides)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_frozen_parameters_do_not_move(toys, tmp_path):
    run(tmp_path, "max_steps=5", "freeze=[body.*]", "optim.weight_decay=0.5")
    trained, initial = weights(tmp_path / "run"), weights_of_fresh_model()
    assert torch.equal(trained["body.1.weight"], initial["body.1.weight"])
    assert torch.equal(trained["body.1.bias"], initial["body.1.bias"])
    assert not torch.equal(trained["head.weight"], initial["head.weight"])


def test_unknown_model_override_is_a_one_line_error(toys, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(tmp_path, "model.width=3")
    assert "unknown override for model 'toy_classifier_micro' key 'width'" in str(err.value)
    assert "valid keys: dim, dropout, img_size, in_chans, num_classes" in str(err.value)


def test_language_model_on_induction_heads(toys, tmp_path):
    summary = run(tmp_path, "data.seq_len=12", "data.train_samples=256", "data.test_samples=40",
                  "max_steps=6", base=["model.name=toy_lm_micro", "data.name=induction_heads"])  # fmt: skip
    test = build_dataset(
        DataSection(name="induction_heads", seq_len=12, train_samples=256, test_samples=40),
        "lm",
        "t",
    ).test
    model = mambaverse.load_pretrained(tmp_path / "run" / "model").eval()
    ids = torch.stack([test[i]["input_ids"] for i in range(40)])
    answers = torch.stack([test[i]["labels"][-1] for i in range(40)])
    with torch.no_grad():
        last = model(ids)[:, -1]  # only the last position is asked
    assert summary["test_samples"] == 40
    assert summary["test_accuracy"] == pytest.approx(
        (last.argmax(-1) == answers).float().mean().item()
    )
    assert summary["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(last, answers).item(), rel=1e-5
    )


def test_captioning_model_on_caption_lines(toys, tmp_path):
    lines = []
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"shade {i}"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    summary = run(tmp_path, f"data.path={tmp_path / 'captions.jsonl'}", "data.img_size=8",
                  "data.max_length=10", "data.test_fraction=0.25", "max_steps=4", "batch_size=4",
                  base=["model.name=toy_captioner_micro", "data.name=captions"])  # fmt: skip
    assert summary["test_samples"] == 3 and 0 < summary["test_loss"] < 20


def test_captions_of_bytes_are_refused_for_a_model_with_its_own_tokenizer(toys, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "0.png")
    line = json.dumps({"image": "0.png", "caption": "a digit"})
    (tmp_path / "c.jsonl").write_text(f"{line}\n{line}\n")
    with pytest.raises(ConfigError) as err:
        run(tmp_path, f"data.path={tmp_path / 'c.jsonl'}", "data.img_size=8",
            base=["model.name=cobra_tiny", "data.name=captions"])  # fmt: skip
    assert "dataset 'captions' gives token ids of its own vocabulary (257 ids)" in str(err.value)
    assert "use a dataset of text that the model tokenises" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_token_ids_past_the_model_s_vocabulary_are_named_before_training(toys, tmp_path):
    np.save(tmp_path / "tokens.npy", np.arange(2, 999, dtype=np.int64))
    with pytest.raises(ConfigError) as err:
        run(tmp_path, f"data.path={tmp_path / 'tokens.npy'}", "data.seq_len=32",
            "model.vocab_size=256", base=["model.name=mamba_micro", "data.name=tokens"])  # fmt: skip
    assert "the data's token ids go up to 998 (vocab_size 999), but the model's vocabulary has " \
        "256 ids; raise model.vocab_size to at least 999" in str(err.value)  # fmt: skip
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # The refused run left no accelerate state behind: another precision works in this process.
    assert run(tmp_path, "precision=bf16", "max_steps=1", name="next")["steps"] == 1


def test_bf16_autocast_on_cpu(toys, tmp_path):
    summary = run(tmp_path, "precision=bf16", "max_steps=3")
    assert summary["steps"] == 3 and np.isfinite(summary["test_loss"])


def test_each_logged_lr_is_the_one_its_step_trained_with(toys, tmp_path):
    from mambaverse.train.config import ScheduleSection
    from mambaverse.train.optim import lr_factor

    run(tmp_path, "max_steps=6", "log_every=1", "schedule.warmup_steps=4", "optim.lr=0.01")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = [r["lr"] for r in records if r["split"] == "train"]
    schedule = ScheduleSection(warmup_steps=4)
    expected = [0.01 * lr_factor(step, 6, schedule) for step in range(6)]  # 0-based steps
    assert logged == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", r"seed: Input should be greater than or equal to 0"),
        ("seed=4294967296", r"seed: Input should be less than 4294967296"),
        ("precision=fp16", r"precision: fp16 on the CPU would run in float32"),
    ],
)
def test_settings_the_cpu_run_cannot_honour_are_refused(toys, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, "max_steps=1", override)
