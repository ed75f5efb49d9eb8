"""`mambaverse info` counts each Mamba / Mamba-2 preset's parameters as transformers does."""

from __future__ import annotations

import re

import pytest
import torch

import mambaverse
from mambaverse.cli import main

pytest.importorskip("transformers")

MAMBA_PRESETS = [
    "mamba_130m",
    "mamba_370m",
    "mamba_790m",
    "mamba_1.4b",
    "mamba_2.8b",
    "mamba_micro",
]
MAMBA2_PRESETS = [
    "mamba2_130m",
    "mamba2_370m",
    "mamba2_780m",
    "mamba2_1.3b",
    "mamba2_2.7b",
    "mamba2_micro",
]


def cli_parameter_count(name: str, capsys) -> int:
    assert main(["info", name]) == 0
    match = re.search(r"parameters: ([\d,]+)", capsys.readouterr().out)
    assert match, "mambaverse info printed no parameter count"
    return int(match[1].replace(",", ""))


def transformers_model(name: str):
    """The transformers model a checkpoint of preset ``name`` would be, built on the meta device."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    config = mambaverse.model_config(name)
    mixer = config["mixer_config"]
    multiple = config["pad_vocab_size_multiple"]
    common = {
        "vocab_size": -(-config["vocab_size"] // multiple) * multiple,
        "hidden_size": config["d_model"],
        "num_hidden_layers": config["n_layer"],
        "state_size": mixer["d_state"],
        "conv_kernel": mixer["d_conv"],
        "expand": mixer["expand"],
        "tie_word_embeddings": True,
    }
    with torch.device("meta"):
        if config["mixer"] == "mamba":
            return MambaForCausalLM(MambaConfig(**common))
        d_inner = mixer["expand"] * config["d_model"]
        return Mamba2ForCausalLM(
            Mamba2Config(
                **common,
                head_dim=mixer["headdim"],
                num_heads=d_inner // mixer["headdim"],
                n_groups=mixer["ngroups"],
                chunk_size=mixer["chunk_size"],
            )
        )


@pytest.mark.parametrize("name", MAMBA_PRESETS + MAMBA2_PRESETS)
def test_info_parameter_count_equals_transformers(name, capsys):
    expected = sum(p.numel() for p in transformers_model(name).parameters())
    assert cli_parameter_count(name, capsys) == expected


def test_every_mamba_lm_preset_is_checked():
    presets = [n for n in mambaverse.list_models(task="lm") if n.startswith(("mamba_", "mamba2_"))]
    assert sorted(presets) == sorted(MAMBA_PRESETS + MAMBA2_PRESETS)


@pytest.mark.parametrize(
    ("name", "nominal"),
    [("mamba_130m", 130e6), ("mamba_2.8b", 2.8e9), ("mamba2_130m", 130e6), ("mamba2_2.7b", 2.7e9)],
)
def test_preset_sizes_are_the_published_ones(name, nominal):
    # The papers name models by rounded size; the counts land within 5% of the name.
    assert abs(mambaverse.count_parameters(name) / nominal - 1) < 0.05
