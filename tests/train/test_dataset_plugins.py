"""Datasets as plugins: a third-party plugin's dataset trains like a core one, is attributed to it,
collides by name like any plugin contribution, and the core's data package imports no plugin."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from pydantic import Field

import mambaverse
from mambaverse import AmbiguousNameError, BackboneSpec, DatasetSpec, hookimpl
from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.train import load_config, train
from mambaverse.train.config import DataSection
from mambaverse.train.data import IGNORE_INDEX, DatasetOptions, Splits, TensorItems, build_dataset

from .conftest import ROOT

HERE = "tests.train.test_dataset_plugins"


class CountingOptions(DatasetOptions):
    """Sequences that count up modulo ``vocab_size``: token t+1 follows token t."""

    seq_len: int = Field(8, ge=2)
    vocab_size: int = 16
    samples: int = 64


def build_counting(options: CountingOptions) -> Splits:
    starts = torch.randint(0, options.vocab_size, (options.samples, 1))
    tokens = (starts + torch.arange(options.seq_len + 1)) % options.vocab_size  # (N, L + 1)
    items = TensorItems({"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]})
    return Splits(train=items, test=items, model_defaults={"vocab_size": options.vocab_size})


class CountingPlugin:
    @hookimpl
    def mambaverse_datasets(self):
        return [
            DatasetSpec("counting", f"{HERE}:CountingOptions", f"{HERE}:build_counting", task="lm"),
            DatasetSpec("digits", f"{HERE}:CountingOptions", f"{HERE}:build_counting", "lm"),
        ]


class WrongReturn:
    @hookimpl
    def mambaverse_datasets(self):
        return [BackboneSpec("not_a_dataset", "x:y")]


def test_a_plugin_dataset_is_attributed_validated_and_trains(toys, tmp_path):
    record = mambaverse.register_plugin(CountingPlugin(), "counting_plugin")
    assert record.ok and record.contributed == {"datasets": ["counting", "digits"]}

    splits = build_dataset(DataSection(name="counting", seq_len=5, samples=3), "lm", "run.yaml")
    item = splits.train[0]
    assert item["input_ids"].shape == (5,) and IGNORE_INDEX not in item["labels"]
    assert torch.equal(item["labels"], (item["input_ids"] + 1) % 16)
    with pytest.raises(ConfigError, match=r"run.yaml: data: unknown key 'seq_length'"):
        build_dataset(DataSection(name="counting", seq_length=5), "lm", "run.yaml")
    with pytest.raises(ConfigError, match="is for lm models, but the model is a vision model"):
        build_dataset(DataSection(name="counting"), "vision", "run.yaml")

    overrides = ["model.name=toy_lm_micro", "data.name=counting", "max_steps=2"]
    summary = train(load_config(None, [*overrides, f"output_dir={tmp_path}"]))
    assert summary["steps"] == 2


def test_plugin_datasets_share_the_name_rules_and_the_unknown_name_error(fresh_catalogue):
    mambaverse.register_plugin(CountingPlugin(), "counting_plugin")
    with pytest.raises(AmbiguousNameError) as err:
        build_dataset(DataSection(name="digits"), "vision", "run.yaml")
    assert "dataset 'digits' is contributed by plugins 'mambaverse' and 'counting_plugin'" in str(
        err.value
    )
    core = build_dataset(DataSection(name="mambaverse:digits", img_size=8), "vision", "run.yaml")
    assert core.train[0]["images"].shape == (1, 8, 8)
    plugin = build_dataset(DataSection(name="counting_plugin:digits"), "lm", "run.yaml")
    assert plugin.train[0]["input_ids"].shape == (8,)

    with pytest.raises(UnknownNameError) as err:
        build_dataset(DataSection(name="countin"), "lm", "run.yaml")
    message = str(err.value)
    assert message.startswith("run.yaml: data.name: unknown dataset 'countin': did you mean")
    # Every valid name is listed: the core's, the built-in cobra plugin's and this plugin's.
    listed = message.rpartition("datasets: ")[2].split(", ")
    assert {"digits", "induction_heads", "vlm_digits", "vlm_jsonl", "counting"} <= set(listed)


def test_a_dataset_hook_returning_other_specs_is_reported(fresh_catalogue):
    record = mambaverse.register_plugin(WrongReturn(), "wrong_dataset")
    assert "mambaverse_datasets() must return a list of DatasetSpec" in record.error
    assert not record.contributed
    with pytest.raises(UnknownNameError):
        build_dataset(DataSection(name="not_a_dataset"), "vision", "run.yaml")


def test_the_core_data_package_imports_no_plugin():
    probe = (
        "import sys, mambaverse.train.data, mambaverse.train.command; "
        "print([m for m in sys.modules if m.startswith('mambaverse.plugins')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
