"""The mixers on their own: config and shape errors, initialisation, and independent references
(transformers' Llama attention and MLP, timm's MLP, the RMSNorm formula)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mambaverse
from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.plugins.mixers.norms import GatedRMSNorm, RMSNorm

TOKEN_MIXERS = {
    "mamba": {"d_state": 4},
    "mamba2": {"d_state": 4, "headdim": 8, "chunk_size": 4},
    "attention": {"num_heads": 4},
}


def test_the_four_mixers_are_registered_with_their_kind():
    assert {"mamba", "mamba2", "attention"} <= set(mambaverse.list_mixers(kind="token"))
    assert "mlp" in mambaverse.list_mixers(kind="channel")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mamba", "d_state"),
        ("mamba2", "headdim"),
        ("attention", "num_kv_heads"),
        ("mlp", "activation"),
    ],
)
def test_unknown_config_key_lists_the_valid_keys(name, valid):
    with pytest.raises(ConfigError, match=rf"unknown .*'not_a_key'.*valid keys: .*\b{valid}\b"):
        mambaverse.create_mixer(name, 32, not_a_key=1)


def test_misspelled_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'd_state'"):
        mambaverse.create_mixer("mamba", 32, d_stat=8)


@pytest.mark.parametrize("name", TOKEN_MIXERS)
@pytest.mark.parametrize("shape", [(2, 5, 16), (5, 32), (1, 2, 5, 32)])
def test_wrong_input_shape_says_what_was_expected(name, shape):
    mixer = mambaverse.create_mixer(name, 32, **TOKEN_MIXERS[name])
    with pytest.raises(
        ValueError, match=rf"expected input \(batch, length, 32\), got \({shape[0]}, "
    ):
        mixer(torch.randn(shape))


@pytest.mark.parametrize("name", TOKEN_MIXERS)
def test_wrong_step_shape_says_what_was_expected(name):
    mixer = mambaverse.create_mixer(name, 32, **TOKEN_MIXERS[name])
    state = mixer.allocate_state(2, max_seqlen=4)
    with pytest.raises(ValueError, match=r"expected one token \(batch, 32\), got \(2, 1, 32\)"):
        mixer.step(torch.randn(2, 1, 32), state)


def test_mlp_wrong_width_says_what_was_expected():
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 32\), got \(3, 16\)"):
        mambaverse.create_mixer("mlp", 32)(torch.randn(3, 16))


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("mamba2", {"headdim": 24}, "not a multiple of headdim 24"),
        ("mamba2", {"headdim": 8, "ngroups": 3}, "ngroups 3 must divide the number of heads 8"),
        ("mamba", {"dt_init": "normal"}, "dt_init must be one of random, constant"),
        ("mamba", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min <= dt_max"),
        ("attention", {"num_heads": 4, "num_kv_heads": 3}, "must divide num_heads"),
        ("attention", {"num_heads": 5}, "not a multiple of num_heads 5"),
        ("attention", {"num_heads": 4, "rotary_dim": 3}, "rotary_dim must be even"),
    ],
)
def test_inconsistent_config_is_a_clear_error(name, config, message):
    with pytest.raises(ConfigError, match=message):
        mambaverse.create_mixer(name, 32, **config)


def test_unknown_mlp_activation_is_named():
    with pytest.raises(UnknownNameError, match="unknown mlp activation 'relu'"):
        mambaverse.create_mixer("mlp", 32, activation="relu")


# -- initialisation (the papers' formulas) ------------------------------------------------------
@pytest.mark.parametrize("dt_init", ["random", "constant"])
def test_mamba_dt_initialisation(dt_init):
    dt_min, dt_max, floor, scale = 0.002, 0.08, 0.01, 1.5
    ssm = mambaverse.create_mixer(
        "mamba",
        64,
        d_state=6,
        dt_init=dt_init,
        dt_scale=scale,
        dt_min=dt_min,
        dt_max=dt_max,
        dt_init_floor=floor,
    ).ssm
    assert ssm.dt_rank == math.ceil(64 / 16)
    dt = F.softplus(ssm.dt_proj.bias.double())
    assert dt.min() >= floor * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    assert (dt == dt.min()).sum() > 1  # the floor clamps part of U[log 0.002, log 0.08]
    bound = ssm.dt_rank**-0.5 * scale
    weight = ssm.dt_proj.weight
    if dt_init == "constant":
        assert torch.allclose(weight, torch.full_like(weight, bound))
    else:
        assert weight.abs().max() <= bound and weight.std() > bound / 3
    expected_A = torch.arange(1, 7, dtype=torch.float32).expand(128, 6)
    torch.testing.assert_close(torch.exp(ssm.A_log), expected_A)
    assert torch.equal(ssm.D, torch.ones(128))


def test_mamba2_initialisation():
    mixer = mambaverse.create_mixer("mamba2", 64, d_state=8, headdim=4, A_init_range=(2, 5))
    A = torch.exp(mixer.A_log)
    assert A.shape == (32,) and A.min() >= 2 and A.max() <= 5
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.equal(mixer.D, torch.ones(32))
    assert mixer.in_proj.out_features == 2 * 128 + 2 * 8 + 32  # z, xBC, dt


def test_bidirectional_models_can_hold_two_independent_scan_directions():
    from mambaverse.plugins.mixers.mamba import SelectiveSSM

    forward, backward = SelectiveSSM(16, 4, 3, 2), SelectiveSSM(16, 4, 3, 2)
    x, z = torch.randn(2, 16, 5), torch.randn(2, 16, 5)
    assert not torch.equal(forward(x, z), backward(x, z))  # separate conv, projections, Δ init
    assert not set(map(id, forward.parameters())) & set(map(id, backward.parameters()))


# -- independent references ---------------------------------------------------------------------
def test_attention_matches_llama_attention_with_gqa_and_rotary():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        rope_theta=500.0,
        attention_bias=True,
    )
    config._attn_implementation = "sdpa"  # causal when no mask is given
    torch.manual_seed(0)
    llama = LlamaAttention(config, layer_idx=0).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    cos, sin = LlamaRotaryEmbedding(config)(x, torch.arange(9)[None].expand(2, -1))
    expected, _ = llama(x, (cos, sin), None)

    ours = mambaverse.create_mixer(
        "attention",
        32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rope_theta=500.0,
        qkv_bias=True,
        out_bias=True,
    ).double()
    ours.load_state_dict(
        {k.replace("o_proj", "out_proj"): v for k, v in llama.state_dict().items()}
    )
    # transformers computes the rotary frequencies in float32, hence not 1e-15.
    torch.testing.assert_close(ours(x), expected, rtol=1e-6, atol=1e-6)


def test_attention_without_rotary_is_softmax_attention():
    torch.manual_seed(0)
    mixer = mambaverse.create_mixer(
        "attention", 12, num_heads=3, head_dim=5, rope_theta=None, causal=False
    ).double()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    q = mixer.q_proj(x).unflatten(-1, (3, 5)).transpose(1, 2)
    k = mixer.k_proj(x).unflatten(-1, (3, 5)).transpose(1, 2)
    v = mixer.v_proj(x).unflatten(-1, (3, 5)).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(5)).softmax(-1)
    expected = mixer.out_proj((weights @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(mixer(x), expected)


def test_partial_rotary_leaves_the_other_channels_alone():
    from mambaverse.kernels import apply_rotary

    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    rotated = apply_rotary(x, torch.arange(5), rotary_dim=4, theta=10000.0)
    assert torch.equal(rotated[..., 4:], x[..., 4:])
    # A rotation keeps each pair's norm, and position 0 is not rotated at all.
    torch.testing.assert_close(rotated[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])


def test_swiglu_matches_llama_mlp():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = transformers.LlamaConfig(
        hidden_size=24, intermediate_size=40, num_attention_heads=4, hidden_act="silu"
    )
    llama = LlamaMLP(config)
    ours = mambaverse.create_mixer("mlp", 24, activation="swiglu", hidden_dim=40)
    ours.load_state_dict(llama.state_dict())
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(ours(x), llama(x))


@pytest.mark.parametrize(
    ("activation", "timm_layer"), [("gelu", "GELU"), ("gelu_tanh", "GELUTanh")]
)
def test_gelu_mlp_matches_timm_mlp(activation, timm_layer):
    timm_layers = pytest.importorskip("timm.layers")
    reference = timm_layers.Mlp(20, 50, act_layer=getattr(timm_layers, timm_layer), bias=True)
    ours = mambaverse.create_mixer("mlp", 20, hidden_dim=50, activation=activation, bias=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 20)
    torch.testing.assert_close(ours(x), reference(x))


def test_swiglu_default_width_keeps_the_gelu_parameter_count_rounded_up():
    mlp = mambaverse.create_mixer("mlp", 96, activation="swiglu", multiple_of=64)
    assert mlp.hidden_dim == 256  # int(8·96/3) = 256, already a multiple of 64
    assert mambaverse.create_mixer("mlp", 100, activation="swiglu").hidden_dim == 384


def test_rmsnorm_computes_its_formula_with_shared_or_mixed_dtypes():
    """Input and weight of one dtype take torch's fused rms_norm; a float32 residual stream
    against bfloat16 weights takes the float32 path and stays float32."""
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    norm = RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.normal_()

    def formula(weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.double()

    torch.testing.assert_close(norm(x), formula(norm.weight), rtol=1e-12, atol=1e-12)
    norm = norm.bfloat16()
    mixed = norm(x.float())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), formula(norm.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gated_rmsnorm_normalises_each_group(norm_before_gate):
    x, z = torch.randn(2, 3, 12, dtype=torch.float64), torch.randn(2, 3, 12, dtype=torch.float64)
    norm = GatedRMSNorm(12, group_size=4, eps=1e-5, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.normal_()

    def rms_per_group(v: torch.Tensor) -> torch.Tensor:  # the formula, groups of 4 channels
        groups = v.unflatten(-1, (3, 4))
        return (groups / groups.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()).flatten(-2)

    if norm_before_gate:
        expected = rms_per_group(x) * norm.weight * F.silu(z)
    else:
        expected = rms_per_group(x * F.silu(z)) * norm.weight
    torch.testing.assert_close(norm(x, z), expected, rtol=1e-12, atol=1e-12)
    # in bfloat16 the norm is computed in float32 and rounded once
    low = norm.bfloat16()(x.bfloat16(), z.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), expected, rtol=2e-2, atol=2e-2)
