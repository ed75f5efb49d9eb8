"""Helpers shared by the Hugging Face converters of the hybrid models: tensor renaming by rules,
and config values every family reads the same way."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mambaverse.errors import ConfigError

Rule = tuple[str, str]  # (regular expression matching the whole HF name, replacement)

# The embedding, final norm and LM head: named alike in Jamba, Bamba, Zamba and Zamba2.
LM_RULES: list[Rule] = [
    (r"model\.embed_tokens\.(.+)", r"embedding.\1"),
    (r"model\.final_layernorm\.(.+)", r"norm_f.\1"),
    (r"lm_head\.(.+)", r"lm_head.\1"),
]


# Rotary frequencies: a buffer that older transformers versions saved, recomputed here.
RECOMPUTED = re.compile(r".*rotary_emb\.inv_freq")


def rename(tensors: dict[str, Any], rules: Sequence[Rule]) -> dict[str, Any]:
    """Each tensor under the name the first matching rule gives. An unmatched name is kept as it
    is, for the load to report as unexpected (or leave out, with ``strict=False``)."""
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed: dict[str, Any] = {}
    for name, tensor in tensors.items():
        if RECOMPUTED.fullmatch(name):
            continue
        for pattern, replacement in compiled:
            if pattern.fullmatch(name):
                renamed[pattern.sub(replacement, name)] = tensor
                break
        else:
            renamed[name] = tensor
    return renamed


def tie_head(state: dict[str, Any], tie: bool, model_type: str) -> dict[str, Any]:
    """Fill lm_head.weight from the embedding when tied (checkpoints store the matrix once)."""
    if "embedding.weight" not in state:
        raise ConfigError(f"{model_type} checkpoint has no model.embed_tokens.weight")
    if tie:
        state["lm_head.weight"] = state["embedding.weight"]
    elif "lm_head.weight" not in state:
        raise ConfigError(
            f"{model_type} checkpoint: tie_word_embeddings is false but there is no lm_head.weight"
        )
    return state


def require(hf: dict[str, Any], key: str, default: Any, allowed: Sequence[Any]) -> Any:
    """hf[key] (or its default), which must be one of ``allowed``."""
    value = hf.get(key, default)
    if value not in allowed:
        raise ConfigError(
            f"{hf.get('model_type')} checkpoint: {key}={value!r} is not supported "
            f"(supported: {', '.join(map(repr, allowed))})"
        )
    return value


def hf_float(value: Any) -> float:
    """A number from a transformers config.json, where infinities are written {"__float__": "Infinity"}."""
    return float(value["__float__"] if isinstance(value, dict) else value)


def rope_theta(hf: dict[str, Any]) -> float:
    """The rotary base of a transformers config (``rope_parameters`` or the older ``rope_theta``)."""
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"{hf.get('model_type')} checkpoint: rope_type {rope['rope_type']!r} is not supported "
            "(only the default rotary embedding)"
        )
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
