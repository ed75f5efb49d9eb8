"""Import Hugging Face ``JambaForCausalLM`` ("jamba") and ``BambaForCausalLM`` ("bamba")
checkpoints into ``hybrid_lm``: their config.json keys and tensor names mapped to ours.

Tensor names, transformers -> mambaverse (i = layer):
    model.layers.i.input_layernorm            -> layers.i.mixer_block.norm
    model.layers.i.mamba.<p>                  -> layers.i.mixer_block.mixer.<p>          (Bamba:
                                                 Mamba-2 names are ours; Jamba: in_proj, out_proj)
    model.layers.i.mamba.{conv1d, x_proj, dt_proj, A_log, D}
                                              -> layers.i.mixer_block.mixer.ssm.<same>   (Jamba)
    model.layers.i.mamba.{dt,b,c}_layernorm   -> layers.i.mixer_block.mixer.ssm.{dt,B,C}_norm
    model.layers.i.self_attn.{q,k,v}_proj     -> layers.i.mixer_block.mixer.{q,k,v}_proj
    model.layers.i.self_attn.o_proj           -> layers.i.mixer_block.mixer.out_proj
    model.layers.i.pre_ff_layernorm           -> layers.i.ffn_norm
    model.layers.i.feed_forward.<p>           -> layers.i.ffn.<p>  (MLP gate/up/down_proj; MoE
                                                 router and experts.e.{gate,up,down}_proj)
    model.embed_tokens / model.final_layernorm / lm_head -> embedding / norm_f / lm_head
"""

from __future__ import annotations

import math
from typing import Any

from mambaverse.errors import ConfigError

from .hf_common import LM_RULES, Rule, hf_float, rename, require, rope_theta, tie_head
from .pattern import MIXER_CODES

_LAYER = r"model\.layers\.(\d+)\."
_MIXER = r"layers.\1.mixer_block.mixer."

_BLOCK_RULES: list[Rule] = [
    (_LAYER + r"input_layernorm\.(.+)", r"layers.\1.mixer_block.norm.\2"),
    (_LAYER + r"pre_ff_layernorm\.(.+)", r"layers.\1.ffn_norm.\2"),
    (_LAYER + r"self_attn\.o_proj\.(.+)", _MIXER + r"out_proj.\2"),
    (_LAYER + r"self_attn\.(.+)", _MIXER + r"\2"),
    (_LAYER + r"feed_forward\.(.+)", r"layers.\1.ffn.\2"),
]
_JAMBA_MAMBA_RULES: list[Rule] = [
    (_LAYER + r"mamba\.((?:in|out)_proj\..+)", _MIXER + r"\2"),
    (_LAYER + r"mamba\.dt_layernorm\.(.+)", _MIXER + r"ssm.dt_norm.\2"),
    (_LAYER + r"mamba\.b_layernorm\.(.+)", _MIXER + r"ssm.B_norm.\2"),
    (_LAYER + r"mamba\.c_layernorm\.(.+)", _MIXER + r"ssm.C_norm.\2"),
    (_LAYER + r"mamba\.(.+)", _MIXER + r"ssm.\2"),
]
_BAMBA_MAMBA_RULES: list[Rule] = [(_LAYER + r"mamba\.(.+)", _MIXER + r"\2")]


def from_hf_jamba(hf: dict[str, Any], tensors: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(hybrid_lm config, state dict) from a transformers ``JambaConfig`` dict and its tensors."""
    require(hf, "hidden_act", "silu", ("silu", "swish"))
    d_model, n_layer = hf["hidden_size"], hf["num_hidden_layers"]
    period, offset = hf.get("attn_layer_period", 8), hf.get("attn_layer_offset", 4)
    layers = "".join("a" if i % period == offset else "m" for i in range(n_layer))
    eps = hf.get("rms_norm_eps", 1e-6)
    dt_rank = hf.get("mamba_dt_rank", "auto")
    mixer_config = {
        "mamba": {
            "d_state": hf.get("mamba_d_state", 16),
            "d_conv": hf.get("mamba_d_conv", 4),
            "expand": hf.get("mamba_expand", 2),
            "dt_rank": math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank,
            "conv_bias": hf.get("mamba_conv_bias", True),
            "bias": hf.get("mamba_proj_bias", False),
            "dt_bc_norm_eps": eps,  # Jamba's RMSNorms on Δ, B, C use the model's epsilon
        },
        "attention": {
            "num_heads": hf.get("num_attention_heads", 32),
            # transformers' JambaConfig: 8 key-value heads unless the config says otherwise
            "num_kv_heads": hf.get("num_key_value_heads", 8) or hf.get("num_attention_heads", 32),
            "rope_theta": None,  # Jamba's attention has no positional encoding
        },
    }
    config = _config(hf, layers, mixer_config, eps)
    num_experts = hf.get("num_experts", 16)
    every, first = hf.get("expert_layer_period", 2), hf.get("expert_layer_offset", 1)
    if num_experts > 1 and any(i % every == first for i in range(n_layer)):
        config |= {
            "moe_every": every,
            "moe_offset": first,
            "moe_config": {
                "num_experts": num_experts,
                "top_k": hf.get("num_experts_per_tok", 2),
                "hidden_dim": hf.get("intermediate_size", 14336),
            },
            "aux_loss_coef": hf.get("router_aux_loss_coef", 0.001),
        }
    rules = [*LM_RULES, *_JAMBA_MAMBA_RULES, *_BLOCK_RULES]
    state = tie_head(rename(tensors, rules), config["tie_embeddings"], "jamba")
    return config, state


def from_hf_bamba(hf: dict[str, Any], tensors: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(hybrid_lm config, state dict) from a transformers ``BambaConfig`` dict and its tensors."""
    require(hf, "hidden_act", "silu", ("silu", "swish"))
    d_model, n_layer = hf["hidden_size"], hf["num_hidden_layers"]
    attention_layers = set(hf.get("attn_layer_indices") or ())
    layers = "".join("a" if i in attention_layers else "2" for i in range(n_layer))
    eps = hf.get("rms_norm_eps", 1e-5)
    expand, nheads = hf.get("mamba_expand", 2), hf.get("mamba_n_heads", 128)
    headdim = hf.get("mamba_d_head", "auto")
    if headdim == "auto":
        headdim = expand * d_model // nheads
    if nheads * headdim != expand * d_model:
        raise ConfigError(
            f"bamba checkpoint: mamba_n_heads·mamba_d_head = {nheads * headdim} != "
            f"mamba_expand·hidden_size = {expand * d_model}"
        )
    num_heads = hf.get("num_attention_heads", 32)
    head_dim = d_model // num_heads
    rope = hf.get("rope_parameters") or {}
    # transformers' Bamba rotates half of each head (partial_rotary_factor 0.5, fixed).
    partial = rope.get("partial_rotary_factor", 0.5)
    mixer_config = {
        "mamba2": {
            "d_state": hf.get("mamba_d_state", 256),
            "d_conv": hf.get("mamba_d_conv", 4),
            "expand": expand,
            "headdim": headdim,
            "ngroups": hf.get("mamba_n_groups", 1),
            "norm_eps": eps,
            "dt_limit": [hf_float(x) for x in hf.get("time_step_limit") or (0.0, math.inf)],
            "conv_bias": hf.get("mamba_conv_bias", True),
            "bias": hf.get("mamba_proj_bias", False),
            "chunk_size": hf.get("mamba_chunk_size", 256),
        },
        "attention": {
            "num_heads": num_heads,
            "num_kv_heads": hf.get("num_key_value_heads", 8) or num_heads,  # as BambaConfig
            "head_dim": head_dim,
            "rope_theta": rope_theta(hf),
            "rotary_dim": int(head_dim * partial),
            "qkv_bias": hf.get("attention_bias", False),
            "out_bias": hf.get("attention_bias", False),
        },
    }
    config = _config(hf, layers, mixer_config, eps)
    config["mlp_config"]["bias"] = hf.get("mlp_bias", False)
    rules = [*LM_RULES, *_BAMBA_MAMBA_RULES, *_BLOCK_RULES]
    state = tie_head(rename(tensors, rules), config["tie_embeddings"], "bamba")
    return config, state


def _config(
    hf: dict[str, Any], layers: str, mixer_config: dict[str, dict[str, Any]], eps: float
) -> dict[str, Any]:
    used = {MIXER_CODES[code] for code in layers}
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "layers": layers,
        "mixer_config": {k: v for k, v in mixer_config.items() if k in used},
        "mlp_config": {"activation": "swiglu", "hidden_dim": hf.get("intermediate_size", 14336)},
        "norm_eps": eps,
        "tie_embeddings": hf.get("tie_word_embeddings", False),
    }
