"""Jamba, Bamba, Zamba and Zamba2 checkpoints saved by transformers load through
``mambaverse.load_pretrained`` with transformers' logits (PyTorch path, CPU, float32)."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.errors import ConfigError

from .hf_models import VOCAB, random_hf_lm

pytest.importorskip("transformers")

# model_type -> case -> (transformers config, sequence lengths)
CASES = {
    "jamba": {
        "attention-at-1-moe-odd-gqa": (
            dict(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                attn_layer_period=3,
                attn_layer_offset=1,
                expert_layer_period=2,
                expert_layer_offset=1,
                num_experts=4,
                num_experts_per_tok=2,
                mamba_d_state=8,
            ),
            (13,),
        ),
        "attention-first-moe-even-top1-dt-rank3": (
            dict(
                hidden_size=24,
                intermediate_size=40,
                num_hidden_layers=3,
                num_attention_heads=2,
                num_key_value_heads=2,
                attn_layer_period=2,
                attn_layer_offset=0,
                expert_layer_period=2,
                expert_layer_offset=0,
                num_experts=3,
                num_experts_per_tok=1,
                mamba_d_state=4,
                mamba_d_conv=3,
                mamba_dt_rank=3,
                mamba_proj_bias=True,
                rms_norm_eps=1e-5,
            ),
            (1, 7),
        ),
    },
    "bamba": {
        "attention-0-2-groups2": (
            dict(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                attn_layer_indices=[0, 2],
                mamba_n_heads=8,
                mamba_n_groups=2,
                mamba_d_state=8,
                mamba_chunk_size=8,
            ),
            (13, 21),
        ),
        "attention-last-biases": (
            dict(
                hidden_size=24,
                intermediate_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                num_key_value_heads=1,
                attn_layer_indices=[2],
                mamba_n_heads=6,
                mamba_d_state=16,
                mamba_chunk_size=5,
                attention_bias=True,
                mlp_bias=True,
                mamba_proj_bias=True,
                tie_word_embeddings=True,
            ),
            (11,),
        ),
    },
    "zamba": {
        "shared-every-2nd": (
            dict(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=5,
                num_attention_heads=4,
                num_key_value_heads=4,
                n_mamba_heads=2,
                mamba_d_state=8,
                attn_layer_period=2,
                attn_layer_offset=1,
            ),
            (13,),
        ),
        "hybrid-first-four-heads-gqa": (
            dict(
                hidden_size=24,
                intermediate_size=40,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                n_mamba_heads=4,
                mamba_d_state=4,
                mamba_dt_rank=3,
                layers_block_type=["hybrid", "mamba", "mamba", "hybrid"],
            ),
            (1, 9),
        ),
    },
    "zamba2": {
        "two-blocks-rope-attention-adapters": (
            dict(
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=6,
                layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"],
                num_mem_blocks=2,
                num_attention_heads=4,
                n_mamba_heads=4,
                mamba_d_state=8,
                chunk_size=8,
                adapter_rank=3,
                use_shared_attention_adapter=True,
                use_mem_rope=True,
            ),
            (13, 21),
        ),
        "one-block-groups2-biases": (
            dict(
                hidden_size=24,
                intermediate_size=32,
                num_hidden_layers=4,
                layers_block_type=["hybrid", "mamba", "mamba", "hybrid"],
                num_mem_blocks=1,
                num_attention_heads=2,
                n_mamba_heads=6,
                mamba_ngroups=2,
                mamba_d_state=4,
                chunk_size=5,
                adapter_rank=2,
                add_bias_linear=True,
            ),
            (12,),
        ),
    },
}
PARAMS = [
    pytest.param(model_type, case, id=f"{model_type}-{case}")
    for model_type, cases in CASES.items()
    for case in cases
]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(("model_type", "case"), PARAMS)
def test_logits_match_transformers(model_type, case, tmp_path):
    config, lengths = CASES[model_type][case]
    reference = random_hf_lm(model_type, **config)
    reference.save_pretrained(tmp_path)
    model = mambaverse.load_pretrained(tmp_path).eval()
    assert model.mambaverse_config["backbone"].endswith(
        "hybrid_lm" if model_type in ("jamba", "bamba") else "zamba"
    )
    for length in lengths:
        input_ids = torch.randint(0, VOCAB, (2, length))
        with torch.no_grad():
            expected = reference(input_ids).logits
            actual = model(input_ids)[..., :VOCAB]
        assert relative_error(actual, expected) < 1e-4, f"length {length}"


def test_jamba_router_loss_matches_transformers(tmp_path):
    config, _ = CASES["jamba"]["attention-at-1-moe-odd-gqa"]
    reference = random_hf_lm("jamba", **config)
    reference.save_pretrained(tmp_path)
    model = mambaverse.load_pretrained(tmp_path).eval()
    input_ids = torch.randint(0, VOCAB, (3, 10))
    with torch.no_grad():
        expected = reference(input_ids, output_router_logits=True).aux_loss
        model(input_ids)
    torch.testing.assert_close(model.aux_loss, expected, rtol=1e-5, atol=1e-6)
    assert model.aux_loss_coef == reference.config.router_aux_loss_coef


def test_untied_transformers_zamba_with_separate_shared_blocks_is_refused(tmp_path):
    # transformers ties Zamba's shared blocks only when tie_word_embeddings is true; otherwise
    # every hybrid layer gets its own copy, which a Zamba model cannot represent.
    config = dict(CASES["zamba"]["hybrid-first-four-heads-gqa"][0], tie_word_embeddings=False)
    random_hf_lm("zamba", **config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"shared block differs between layers 0 and 3"):
        mambaverse.load_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", ["jamba", "bamba"])
def test_key_value_heads_left_out_of_config_json_mean_transformers_default(model_type, tmp_path):
    import json

    config = dict(CASES[model_type][next(iter(CASES[model_type]))][0])
    # 16 query heads, and the class default of 8 key-value heads, left out below
    config |= {"num_attention_heads": 16, "num_key_value_heads": 8, "hidden_size": 64}
    config.pop("mamba_n_heads", None), config.pop("mamba_d_head", None)
    reference = random_hf_lm(model_type, **config)
    reference.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    del written["num_key_value_heads"]
    (tmp_path / "config.json").write_text(json.dumps(written))
    input_ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        expected = reference(input_ids).logits
        actual = mambaverse.load_pretrained(tmp_path).eval()(input_ids)[..., :VOCAB]
    assert relative_error(actual, expected) < 1e-4
