"""Import Hugging Face ``ZambaForCausalLM`` ("zamba") and ``Zamba2ForCausalLM`` ("zamba2")
checkpoints into the ``zamba`` backbone.

Tensor names, transformers -> mambaverse (i = layer; k = the k-th layer applying a shared block,
which uses block b = k mod num_shared_blocks as that block's use u = k div num_shared_blocks):
    model.layers.i.[mamba_decoder.]input_layernorm -> layers.i.norm
    model.layers.i.[mamba_decoder.]mamba.<p>       -> layers.i.mixer.<p>   (see below for Zamba)
    model.layers.i.linear                          -> layers.i.linear
    model.layers.i.shared_transf[ormer].<p>        -> shared_blocks.b.<p'>  (usually stored once, at
                                                      the block's first layer; copies must agree)
        input_layernorm, pre_ff_layernorm          -> input_norm, ffn_norm
        self_attn.{q,k,v}_proj, self_attn.o_proj   -> attention.{q,k,v}_proj[.base], attention.out_proj
        self_attn.linear_q_adapter_list.k.<j>      -> attention.q_proj.adapters.u.<j>   (k, v alike)
        feed_forward.{gate,up,down}_proj           -> ffn.{gate,up,down}_proj           (Zamba)
        feed_forward.gate_up_proj (2F rows)        -> ffn.gate_proj.base (rows :F), ffn.up_proj.base (F:)
        feed_forward.gate_up_proj_adapter_list.k.0 -> ffn.{gate,up}_proj.adapters.u.0 (one shared D)
        feed_forward.gate_up_proj_adapter_list.k.1 -> ffn.gate_proj.adapters.u.1 (rows :F), up (F:)

Zamba's multi-head Mamba stores x and z interleaved in in_proj (rows 2c, 2c+1 are channel c's x
and z) and per-head x_proj_weight (H, R+2N, P), dt_proj_weight (H, P, R), dt_proj_bias,
A_log, D (H, P, ...): they become the ``mamba`` mixer's [x; z] in_proj and its block-diagonal
x_proj / dt_proj (``nheads=H``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from mambaverse.errors import ConfigError

from .hf_common import LM_RULES, RECOMPUTED, rename, require, rope_theta, tie_head

Tensors = dict[str, torch.Tensor]

_HYBRID_NAMES = {"hybrid": "h", "g": "h", "mamba": "m", "linear_attention": "m", "m": "m"}


def from_hf_zamba(hf: dict[str, Any], tensors: Tensors) -> tuple[dict[str, Any], Tensors]:
    """(zamba config, state dict) from a transformers ``ZambaConfig`` dict and its tensors."""
    require(hf, "hidden_mamba_act", "silu", ("silu", "swish"))
    d_model = hf["hidden_size"]
    dt_rank = hf.get("mamba_dt_rank", "auto")
    mixer_config = {
        "d_state": hf.get("mamba_d_state", 16),
        "d_conv": hf.get("mamba_d_conv", 4),
        "expand": hf.get("mamba_expand", 2),
        "dt_rank": math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank,
        "dt_min": hf.get("time_step_min", 0.001),
        "dt_max": hf.get("time_step_max", 0.1),
        "dt_init_floor": hf.get("time_step_floor", 1e-4),
        "conv_bias": hf.get("mamba_conv_bias", True),
        "bias": hf.get("mamba_proj_bias", False),
        "nheads": hf.get("n_mamba_heads", 2),
    }
    config = _config(hf, "mamba", mixer_config, rope=False, intermediate=14848, mlp_bias=False)
    config["attention_config"]["num_heads"] = hf.get("num_attention_heads", 16)
    return config, _state(hf, tensors, config, _zamba_mamba)


def from_hf_zamba2(hf: dict[str, Any], tensors: Tensors) -> tuple[dict[str, Any], Tensors]:
    """(zamba config, state dict) from a transformers ``Zamba2Config`` dict and its tensors."""
    if hf.get("use_long_context"):
        raise ConfigError(
            "zamba2 checkpoint: use_long_context (rescaled rotary base) is not supported"
        )
    d_model, expand = hf["hidden_size"], hf.get("mamba_expand", 2)
    nheads = hf.get("n_mamba_heads", 8)
    bias = hf.get("add_bias_linear", False)
    mixer_config = {
        "d_state": hf.get("mamba_d_state", 64),
        "d_conv": hf.get("mamba_d_conv", 4),
        "expand": expand,
        "headdim": hf.get("mamba_headdim") or int(expand * d_model) // nheads,
        "ngroups": hf.get("mamba_ngroups", 1),
        "norm_eps": 1e-5,  # transformers' Zamba2 gated norm has a fixed epsilon
        "dt_min": hf.get("time_step_min", 0.001),
        "dt_max": hf.get("time_step_max", 0.1),
        "dt_init_floor": hf.get("time_step_floor", 1e-4),
        "dt_limit": [hf.get("time_step_min", 0.001), math.inf],  # transformers' Zamba2 clamp
        "conv_bias": True,  # transformers' Zamba2 conv1d always has a bias
        "bias": bias,
        "chunk_size": hf.get("chunk_size", 256),
    }
    config = _config(
        hf,
        "mamba2",
        mixer_config,
        rope=hf.get("use_mem_rope", False),
        intermediate=4 * d_model,
        mlp_bias=bias,
    )
    config["attention_config"]["num_heads"] = hf.get("num_attention_heads", 32)
    config |= {
        "num_shared_blocks": hf.get("num_mem_blocks", 1),
        "adapter_rank": hf.get("adapter_rank", 128),
        "attention_adapters": hf.get("use_shared_attention_adapter", False),
    }
    return config, _state(hf, tensors, config, lambda name, tensor: {name: tensor})


def _config(
    hf: dict[str, Any],
    mixer: str,
    mixer_config: dict[str, Any],
    rope: bool,
    intermediate: int,
    mlp_bias: bool,
) -> dict[str, Any]:
    d_model = hf["hidden_size"]
    if hf.get("attention_hidden_size", 2 * d_model) != 2 * d_model:
        raise ConfigError(
            f"{hf['model_type']} checkpoint: attention_hidden_size {hf['attention_hidden_size']} "
            f"!= 2·hidden_size; the shared block reads [hidden, embeddings]"
        )
    require(hf, "hidden_act", "gelu", ("gelu",))  # the exact GELU, gating the shared MLP
    attention: dict[str, Any] = {"rope_theta": rope_theta(hf) if rope else None}
    if hf.get("num_key_value_heads"):
        attention["num_kv_heads"] = hf["num_key_value_heads"]
    if hf.get("attention_head_dim"):
        attention["head_dim"] = hf["attention_head_dim"]
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": d_model,
        "layers": _layers(hf),
        "mixer": mixer,
        "mixer_config": mixer_config,
        "attention_config": attention,
        "mlp_config": {
            "activation": "geglu",
            "hidden_dim": hf.get("intermediate_size") or intermediate,
            "bias": mlp_bias,
        },
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
        "tie_embeddings": hf.get("tie_word_embeddings", True),
    }


def _layers(hf: dict[str, Any]) -> str:
    """The m / h pattern from layers_block_type, or (old Zamba configs) the attention period."""
    n_layer = hf["num_hidden_layers"]
    types = hf.get("layers_block_type")
    if types is None:
        if hf["model_type"] != "zamba":
            raise ConfigError(
                f"{hf['model_type']} checkpoint: config.json has no layers_block_type"
            )
        # transformers' ZambaConfig default: two Mamba layers, a hybrid one, then periodic.
        period, offset = hf.get("attn_layer_period", 6), hf.get("attn_layer_offset", 4)
        types = ["m", "m", "hybrid"] + [
            "hybrid" if i % period == offset else "m" for i in range(n_layer - 3)
        ]
    unknown = sorted(set(types) - set(_HYBRID_NAMES))
    if unknown:
        raise ConfigError(
            f"{hf['model_type']} checkpoint: unknown layers_block_type entries {unknown}"
        )
    if len(types) != n_layer:
        raise ConfigError(
            f"{hf['model_type']} checkpoint: {len(types)} layers_block_type entries for "
            f"num_hidden_layers={n_layer}"
        )
    return "".join(_HYBRID_NAMES[t] for t in types)


def _zamba_mamba(name: str, tensor: torch.Tensor) -> Tensors:
    """Zamba's multi-head Mamba tensors -> the ``mamba`` mixer's (nheads > 1) tensors."""
    if name.startswith("in_proj."):
        # Row 2c is channel c's x, row 2c+1 its gate z: regroup as [x; z].
        pairs = tensor.unflatten(0, (-1, 2))
        return {name: torch.cat([pairs[:, 0], pairs[:, 1]])}
    if name.startswith("out_proj."):
        return {name: tensor}
    if name.startswith("conv1d."):
        return {f"ssm.{name}": tensor}
    reshape = {
        "x_proj_weight": ("x_proj.weight", lambda t: t.flatten(0, 1)),  # (H·(R+2N), P)
        "dt_proj_weight": ("dt_proj.weight", lambda t: t.flatten(0, 1)),  # (H·P, R)
        "dt_proj_bias": ("dt_proj.bias", lambda t: t.flatten()),
        "A_log": ("A_log", lambda t: t.flatten(0, 1)),  # (H·P, N)
        "D": ("D", lambda t: t.flatten()),
    }
    if name not in reshape:
        raise ConfigError(f"zamba checkpoint: unexpected Mamba tensor {name!r}")
    ours, fn = reshape[name]
    return {f"ssm.{ours}": fn(tensor)}


_LAYER = re.compile(r"model\.layers\.(\d+)\.(?:mamba_decoder\.)?(.+)")
_SHARED = re.compile(r"shared_transf(?:ormer)?\.(.+)")
_ADAPTER = re.compile(
    r"(self_attn|feed_forward)\.(linear_[qkv]|gate_up_proj)_adapter_list\.(\d+)\.([01])\.weight"
)


def _state(
    hf: dict[str, Any],
    tensors: Tensors,
    config: dict[str, Any],
    mamba: Callable[[str, torch.Tensor], Tensors],
) -> Tensors:
    model_type = hf["model_type"]
    hybrid = [i for i, code in enumerate(config["layers"]) if code == "h"]
    blocks = config.get("num_shared_blocks", 1)
    block_of = {layer: k % blocks for k, layer in enumerate(hybrid)}
    lm_tensors = {name: t for name, t in tensors.items() if not _LAYER.fullmatch(name)}
    state = rename(lm_tensors, LM_RULES)
    copies: dict[str, list[tuple[int, torch.Tensor]]] = {}  # shared tensor -> (layer, value)
    for name, tensor in tensors.items():
        match = _LAYER.fullmatch(name)
        if match is None or RECOMPUTED.fullmatch(name):
            continue
        i, rest = int(match[1]), match[2]
        shared = _SHARED.fullmatch(rest)
        if shared:
            for sub, t in _shared(shared[1], tensor, config, model_type).items():
                copies.setdefault(f"shared_blocks.{block_of[i]}.{sub}", []).append((i, t))
        elif rest.startswith("mamba."):
            for sub, t in mamba(rest.removeprefix("mamba."), tensor).items():
                state[f"layers.{i}.mixer.{sub}"] = t
        elif rest.startswith("input_layernorm."):
            state[f"layers.{i}.norm.{rest.removeprefix('input_layernorm.')}"] = tensor
        elif rest.startswith("linear."):
            state[f"layers.{i}.{rest}"] = tensor
        else:
            state[name] = tensor  # for the load to report as unexpected
    for ours, stored in copies.items():
        (first, value), *others = sorted(stored, key=lambda copy: copy[0])
        for layer, other in others:
            if not torch.equal(value, other):
                # transformers ties the shared blocks only when tie_word_embeddings is true.
                raise ConfigError(
                    f"{model_type} checkpoint: the shared block differs between layers {first} "
                    f"and {layer} ({ours}); a Zamba model shares it (checkpoints saved by "
                    "transformers with tie_word_embeddings=false do not)"
                )
        state[ours] = value
    return tie_head(state, config["tie_embeddings"], model_type)


def _shared(name: str, tensor: torch.Tensor, config: dict[str, Any], model_type: str) -> Tensors:
    """One shared-block tensor under our name(s); packed gate/up tensors are split in two."""
    blocks = config.get("num_shared_blocks", 1)
    mlp_adapted = config.get("adapter_rank") is not None
    attention_adapted = config.get("attention_adapters", False)
    adapter = _ADAPTER.fullmatch(name)
    if adapter:
        _, projection, k, j = adapter.groups()
        use = int(k) // blocks
        if projection == "gate_up_proj":
            down_or_up = {"0": (tensor, tensor), "1": tensor.chunk(2)}[j]
            return {
                f"ffn.{p}.adapters.{use}.{j}.weight": t
                for p, t in zip(("gate_proj", "up_proj"), down_or_up)
            }
        return {f"attention.{projection[-1]}_proj.adapters.{use}.{j}.weight": tensor}
    base = ".base" if attention_adapted else ""
    simple = {
        "input_layernorm.weight": "input_norm.weight",
        "pre_ff_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": f"attention.q_proj{base}.weight",
        "self_attn.k_proj.weight": f"attention.k_proj{base}.weight",
        "self_attn.v_proj.weight": f"attention.v_proj{base}.weight",
        "self_attn.o_proj.weight": "attention.out_proj.weight",
    }
    if name in simple:
        return {simple[name]: tensor}
    if name.startswith("feed_forward.gate_up_proj."):  # Zamba2: [gate; up] in one matrix
        param = name.rsplit(".", 1)[1]
        suffix = f".base.{param}" if mlp_adapted else f".{param}"
        gate, up = tensor.chunk(2)
        return {f"ffn.gate_proj{suffix}": gate, f"ffn.up_proj{suffix}": up}
    if name.startswith("feed_forward."):  # Zamba: gate_proj, up_proj, down_proj
        return {f"ffn.{name.removeprefix('feed_forward.')}": tensor}
    raise ConfigError(f"{model_type} checkpoint: unexpected shared-block tensor {name!r}")
