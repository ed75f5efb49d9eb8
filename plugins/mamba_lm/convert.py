"""Import Hugging Face ``MambaForCausalLM`` ("mamba") and ``Mamba2ForCausalLM`` ("mamba2")
checkpoints: their config.json keys and tensor names mapped to ``mamba_lm``'s.

:func:`to_hf` is the inverse (``mambaverse.save_hf``): a model of either mixer written as the
checkpoint transformers' ``AutoModelForCausalLM`` loads.

Tensor names, transformers -> mambaverse (i = layer):
    backbone.embeddings.weight (or .embedding.)  -> embedding.weight
    backbone.layers.i.norm.weight                -> layers.i.norm.weight
    backbone.layers.i.mixer.<p>                  -> layers.i.mixer.<p>           (Mamba-2, and
                                                    Mamba's in_proj / out_proj)
    backbone.layers.i.mixer.{conv1d, x_proj, dt_proj, A_log, D}
                                                 -> layers.i.mixer.ssm.<same>    (Mamba)
    backbone.norm_f.weight                       -> norm_f.weight
    lm_head.weight                               -> lm_head.weight (the embedding when tied)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mambaverse.errors import ConfigError

_MAMBA_SSM_PARAMS = ("conv1d.", "x_proj.", "dt_proj.", "A_log", "D")


# transformers' defaults (MambaConfig(), Mamba2Config()) for the keys read here: a config.json
# without one of them means what transformers' class makes of it.
MAMBA_DEFAULTS = {
    "vocab_size": 50280, "hidden_size": 768, "num_hidden_layers": 32, "state_size": 16,
    "expand": 2, "conv_kernel": 4, "layer_norm_epsilon": 1e-5, "time_step_rank": "auto",
    "time_step_min": 0.001, "time_step_max": 0.1, "time_step_init_scheme": "random",
    "time_step_scale": 1.0, "time_step_floor": 1e-4, "use_conv_bias": True, "use_bias": False,
    "residual_in_fp32": True, "tie_word_embeddings": True, "hidden_act": "silu",
}  # fmt: skip
MAMBA2_DEFAULTS = {
    "vocab_size": 32768, "hidden_size": 4096, "num_hidden_layers": 64, "state_size": 128,
    "expand": 2, "conv_kernel": 4, "layer_norm_epsilon": 1e-5, "num_heads": 128, "head_dim": 64,
    "n_groups": 8, "time_step_min": 0.001, "time_step_max": 0.1, "time_step_floor": 1e-4,
    "time_step_limit": (0.0, "inf"), "use_conv_bias": True, "use_bias": False,
    "residual_in_fp32": True, "tie_word_embeddings": False, "chunk_size": 256,
    "hidden_act": "silu",
}  # fmt: skip


def from_hf_mamba(hf: dict[str, Any], tensors: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(mamba_lm config, state dict) from a transformers ``MambaConfig`` dict and its tensors."""
    hf = {**MAMBA_DEFAULTS, **hf}
    _require_silu(hf)
    d_model = hf["hidden_size"]
    expand = hf["expand"]
    if "intermediate_size" in hf and hf["intermediate_size"] != int(expand * d_model):
        raise ConfigError(
            f"mamba checkpoint: intermediate_size {hf['intermediate_size']} != expand·hidden_size "
            f"{int(expand * d_model)}; mamba_lm derives it from expand"
        )
    mixer_config = {
        "d_state": hf["state_size"],
        "d_conv": hf["conv_kernel"],
        "expand": expand,
        "dt_rank": hf["time_step_rank"],
        "dt_min": hf["time_step_min"],
        "dt_max": hf["time_step_max"],
        "dt_init": hf["time_step_init_scheme"],
        "dt_scale": hf["time_step_scale"],
        "dt_init_floor": hf["time_step_floor"],
        "conv_bias": hf["use_conv_bias"],
        "bias": hf["use_bias"],
    }
    config = _lm_config(hf, "mamba", mixer_config)
    return config, _state_dict(tensors, config, _mamba_mixer_name)


def from_hf_mamba2(hf: dict[str, Any], tensors: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(mamba_lm config, state dict) from a transformers ``Mamba2Config`` dict and its tensors."""
    hf = {**MAMBA2_DEFAULTS, **hf}
    _require_silu(hf)
    d_model, expand, headdim = hf["hidden_size"], hf["expand"], hf["head_dim"]
    if hf["num_heads"] * headdim != int(expand * d_model):
        raise ConfigError(
            f"mamba2 checkpoint: num_heads·head_dim = {hf['num_heads'] * headdim} != "
            f"expand·hidden_size = {int(expand * d_model)}"
        )
    eps = hf["layer_norm_epsilon"]
    mixer_config = {
        "d_state": hf["state_size"],
        "d_conv": hf["conv_kernel"],
        "expand": expand,
        "headdim": headdim,
        "ngroups": hf["n_groups"],
        "norm_eps": eps,  # transformers' gated norm uses the model's epsilon
        "dt_min": hf["time_step_min"],
        "dt_max": hf["time_step_max"],
        "dt_init_floor": hf["time_step_floor"],
        "dt_limit": [_as_float(v) for v in hf["time_step_limit"]],
        "conv_bias": hf["use_conv_bias"],
        "bias": hf["use_bias"],
        "chunk_size": hf["chunk_size"],
    }
    config = _lm_config(hf, "mamba2", mixer_config)
    return config, _state_dict(tensors, config, lambda name: name)


def _as_float(value: Any) -> float:
    """A JSON number; transformers writes infinities as ``{"__float__": "Infinity"}``."""
    return float(value["__float__"] if isinstance(value, dict) else value)


def _require_silu(hf: dict[str, Any]) -> None:
    act = hf["hidden_act"]
    if act not in ("silu", "swish"):
        raise ConfigError(
            f"{hf.get('model_type')} checkpoint: hidden_act {act!r} is not supported "
            "(the Mamba blocks use silu)"
        )


def _lm_config(hf: dict[str, Any], mixer: str, mixer_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layer": hf["num_hidden_layers"],
        "mixer": mixer,
        "mixer_config": mixer_config,
        "norm": "rmsnorm",
        "norm_eps": hf["layer_norm_epsilon"],
        "residual_in_fp32": hf["residual_in_fp32"],
        "tie_embeddings": hf["tie_word_embeddings"],
        # The checkpoint's vocabulary is already padded as it was trained.
        "pad_vocab_size_multiple": 1,
    }


def _mamba_mixer_name(name: str) -> str:
    """Mamba's per-direction SSM parameters live in the ``ssm`` sub-module here."""
    return "ssm." + name if name.startswith(_MAMBA_SSM_PARAMS) else name


_LAYER = re.compile(r"layers\.(\d+)\.mixer\.(.+)")


def _state_dict(
    tensors: dict[str, Any], config: dict[str, Any], mixer_name: Callable[[str], str]
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("backbone.")
        if name.startswith("embeddings."):
            name = "embedding." + name.removeprefix("embeddings.")
        match = _LAYER.fullmatch(name)
        if match:
            name = f"layers.{match[1]}.mixer.{mixer_name(match[2])}"
        state[name] = tensor
    if "embedding.weight" not in state:
        raise ConfigError("checkpoint has no backbone.embeddings.weight; it is not a causal LM")
    if config["tie_embeddings"]:
        # save_pretrained drops the tied copy; the model's lm_head shares the embedding anyway.
        state["lm_head.weight"] = state["embedding.weight"]
    elif "lm_head.weight" not in state:
        raise ConfigError(
            "checkpoint has untied embeddings (tie_word_embeddings=false) but no lm_head.weight"
        )
    return state


def to_hf(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transformers config.json, tensors) of a ``mamba_lm`` model: the inverse of
    :func:`from_hf_mamba` / :func:`from_hf_mamba2`. Settings transformers' Mamba models lack
    (a LayerNorm, multi-head Mamba, Jamba's Δ/B/C norms, attention mixers) are refused."""
    from mambaverse.api import get_mixer, with_defaults

    config = with_defaults(type(model), model.mambaverse_config["config"])
    mixer = config["mixer"]
    if mixer not in ("mamba", "mamba2"):
        raise ConfigError(
            f"save_hf: mixer {mixer!r} has no transformers Mamba model (mamba, mamba2)"
        )
    if config["norm"] != "rmsnorm":
        raise ConfigError(
            f"save_hf: norm {config['norm']!r}; transformers' Mamba models use rmsnorm"
        )
    mc = with_defaults(get_mixer(mixer).load(), config["mixer_config"] or {})
    eos = getattr(model, "generation_defaults", {}).get("eos_token_id")
    hf: dict[str, Any] = {
        "vocab_size": model.padded_vocab_size,  # the embedding's rows, as checkpoints store them
        "hidden_size": model.d_model,
        "num_hidden_layers": model.n_layer,
        "state_size": mc["d_state"],
        "conv_kernel": mc["d_conv"],
        "expand": mc["expand"],
        "use_conv_bias": mc["conv_bias"],
        "use_bias": mc["bias"],
        "time_step_min": mc["dt_min"],
        "time_step_max": mc["dt_max"],
        "time_step_floor": mc["dt_init_floor"],
        "layer_norm_epsilon": config["norm_eps"],
        "residual_in_fp32": config["residual_in_fp32"],
        "tie_word_embeddings": config["tie_embeddings"],
        "hidden_act": "silu",
        "eos_token_id": eos,
        "bos_token_id": None,
        "pad_token_id": None,
    }
    if mixer == "mamba":
        if mc["nheads"] != 1 or mc["dt_bc_norm_eps"] is not None:
            raise ConfigError(
                "save_hf: a multi-head Mamba mixer or one with Δ/B/C norms (Zamba's, Jamba's) "
                "has no transformers MambaForCausalLM"
            )
        ssm = model.layers[0].mixer.ssm
        hf |= {
            "model_type": "mamba",
            "architectures": ["MambaForCausalLM"],
            "intermediate_size": int(mc["expand"] * model.d_model),
            "time_step_rank": ssm.dt_proj.in_features,
            "time_step_init_scheme": mc["dt_init"],
            "time_step_scale": mc["dt_scale"],
        }
    else:
        if mc["norm_before_gate"]:
            raise ConfigError("save_hf: norm_before_gate=True; transformers' Mamba-2 gates first")
        d_inner = int(mc["expand"] * model.d_model)
        hf |= {
            "model_type": "mamba2",
            "architectures": ["Mamba2ForCausalLM"],
            "num_heads": d_inner // mc["headdim"],
            "head_dim": mc["headdim"],
            "n_groups": mc["ngroups"],
            "chunk_size": mc["chunk_size"],
            "time_step_limit": [float(v) for v in mc["dt_limit"]],
        }
    prefix = {"mamba": _mamba_hf_name, "mamba2": lambda name: name}[mixer]
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if not hf["tie_word_embeddings"]:
                tensors[name] = tensor
            continue
        match = _LAYER.fullmatch(name)
        if match:
            name = f"layers.{match[1]}.mixer.{prefix(match[2])}"
        if name.startswith("embedding."):
            name = "embeddings." + name.removeprefix("embedding.")
        tensors["backbone." + name] = tensor
    return hf, tensors


def _mamba_hf_name(name: str) -> str:
    return name.removeprefix("ssm.")
