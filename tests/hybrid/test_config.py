"""Layer patterns and configs of ``hybrid_lm`` and ``zamba``: what they build, the one-line
errors for bad ones, and checkpoints that rebuild the same model."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.plugins.hybrid.moe import MoE
from mambaverse.plugins.hybrid.pattern import token_mixers
from mambaverse.plugins.mixers.attention import Attention
from mambaverse.plugins.mixers.mamba import Mamba
from mambaverse.plugins.mixers.mamba2 import Mamba2
from mambaverse.plugins.mixers.mlp import MLP

MIXERS = {
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 4, "headdim": 8, "chunk_size": 8},
    "attention": {"num_heads": 2},
}


def hybrid(pattern, **overrides):
    """A small hybrid_lm with the mixer configs ``pattern`` needs (``overrides`` win)."""
    used = set(token_mixers(pattern))
    config = {
        "vocab_size": 50,
        "d_model": 16,
        "layers": pattern,
        "mixer_config": {name: cfg for name, cfg in MIXERS.items() if name in used},
        "mlp_config": {"hidden_dim": 24},
        "moe_every": 0,
        "moe_offset": 0,
        "moe_config": None,
        **overrides,
    }
    return mambaverse.create_model("jamba_micro", **config)


def test_pattern_string_builds_the_layers_it_names():
    model = hybrid("m2a | ma", moe_every=2, moe_offset=0, moe_config={"num_experts": 2})
    mixers = [type(layer.mixer_block.mixer) for layer in model.layers]
    ffns = [type(layer.ffn) for layer in model.layers]
    assert mixers == [Mamba, Mamba2, Attention, Mamba, Attention]
    assert ffns == [MoE, MLP, MoE, MLP, MoE]
    assert model.layer_types == ["mamba", "mamba2", "attention", "mamba", "attention"]


def test_pattern_list_and_explicit_moe_layers():
    model = hybrid(["mamba2", "attention", "mamba2"], moe_layers=[2], moe_config={"num_experts": 3})
    assert [type(layer.ffn) for layer in model.layers] == [MLP, MLP, MoE]
    assert model.moe_layers == [2]
    logits = model(torch.randint(0, 50, (1, 5)))
    assert logits.shape == (1, 5, 50)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"layers": "mmxa"},
            r"unknown layer code\(s\) 'x' in 'mmxa'; use 'm' = mamba, '2' = mamba2",
        ),
        ({"layers": " | "}, r"the layer pattern is empty"),
        ({"layers": ["mamba", "mlp"]}, r"layers\[1\]: 'mlp' is a channel mixer"),
        ({"layers": "mm"}, r"mixer_config has settings for attention, which no layer uses"),
        ({"moe_layers": [0, 5]}, r"moe_layers \[5\] are not layer indices 0..1"),
        ({"moe_layers": [1, 1]}, r"moe_layers lists a layer twice"),
        ({"moe_every": 2, "moe_layers": [1]}, r"either moe_every/moe_offset or moe_layers"),
        ({"moe_every": 2, "moe_offset": 2}, r"need 0 <= moe_offset < moe_every"),
        ({"moe_offset": 1}, r"moe_offset is set but moe_every is 0"),
        ({"moe_config": {"num_experts": 2}}, r"moe_config is set but no layer is MoE"),
    ],
)
def test_bad_hybrid_config_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        hybrid("ma", **overrides)


def test_unknown_mixer_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="mamba2"):
        hybrid("ma", layers=["mamba", "mamab2"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": "mhq"}, r"unknown layer code\(s\) 'q' in 'mhq'; use 'm' = mamba, 'h' = hybrid"),
        ({"layers": "mmhm", "num_shared_blocks": 2}, r"2 shared blocks but only 1 'h' layers"),
        (
            {"attention_adapters": True, "adapter_rank": None},
            r"attention_adapters needs adapter_rank",
        ),
        ({"attention_config": {"out_dim": 8}}, r"cannot set out_dim"),
    ],
)
def test_bad_zamba_config_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        mambaverse.create_model("zamba2_micro", **overrides)


def test_zamba_blocks_alternate_and_adapters_are_per_use():
    model = mambaverse.create_model("zamba2_micro")  # layers "mhmhmh", 2 blocks
    assert model.shared_use == {1: (0, 0), 3: (1, 0), 5: (0, 1)}
    first, second = model.shared_blocks
    assert len(first.ffn.gate_proj.adapters) == 2 and len(second.ffn.gate_proj.adapters) == 1
    assert len(first.attention.q_proj.adapters) == 2
    # The gate and up adapters of one use share their down-projection (Zamba2's fused gate_up).
    assert first.ffn.gate_proj.adapters[1][0] is first.ffn.up_proj.adapters[1][0]


@pytest.mark.parametrize("name", ["jamba_micro", "bamba_micro", "zamba_micro", "zamba2_micro"])
def test_checkpoint_round_trip(name, tmp_path):
    model = mambaverse.create_model(name).eval()
    input_ids = torch.randint(0, 256, (2, 7))
    mambaverse.save_pretrained(model, tmp_path / name)
    loaded = mambaverse.load_pretrained(tmp_path / name).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids), model(input_ids), rtol=0, atol=0)


def test_a_stack_returning_one_tensor_is_refused():
    # The stacks return (hidden, residual); a single (2, L, d) tensor would otherwise unpack
    # along the batch into two "halves" and give wrong logits without a word.
    from mambaverse.plugins.hybrid.lm import LanguageModel

    class OneTensorStack(LanguageModel):
        def stack(self, h, state):
            return h

    model = OneTensorStack(50, 16, 1e-6, True, 1, 0.02, None)
    with pytest.raises(
        TypeError, match=r"OneTensorStack.stack must return .* \(hidden, residual\)"
    ):
        model(torch.zeros(2, 5, dtype=torch.long))
