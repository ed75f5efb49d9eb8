"""Layer patterns: which token mixer each layer uses, and which layers get mixture-of-experts MLPs.

A pattern is a string with one character per layer, e.g. Jamba's period of eight
``"mmmmammm"`` (Mamba, Mamba, Mamba, Mamba, attention, ...). Spaces and ``|`` are ignored, so
long stacks can be grouped for reading: ``"mmmmammm mmmmammm"``. ``hybrid_lm`` also takes a list
of registered token-mixer names (``["mamba2", "mamba2", "attention"]``), which admits mixers
that have no one-letter code, e.g. a third-party plugin's.

Which layers' MLPs are MoE: every ``moe_every`` layers starting at ``moe_offset``
(Jamba: every 2nd from layer 1), or an explicit list of layer indices ``moe_layers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mambaverse.api import get_mixer
from mambaverse.errors import ConfigError

SEPARATORS = " \t\n|"

# hybrid_lm's one-letter codes -> token mixer names
MIXER_CODES = {"m": "mamba", "2": "mamba2", "a": "attention"}


def expand_codes(pattern: str, codes: Mapping[str, str], what: str) -> list[str]:
    """``"mm a"`` -> ``[codes["m"], codes["m"], codes["a"]]``; unknown characters are an error."""
    letters = [c for c in pattern if c not in SEPARATORS]
    unknown = sorted({c for c in letters if c not in codes})
    if unknown:
        legend = ", ".join(f"{code!r} = {name}" for code, name in codes.items())
        raise ConfigError(
            f"{what}: unknown layer code(s) {', '.join(map(repr, unknown))} in {pattern!r}; use {legend}"
        )
    if not letters:
        raise ConfigError(
            f"{what}: the layer pattern is empty; give one code per layer ({pattern!r})"
        )
    return [codes[c] for c in letters]


def token_mixers(layers: str | Sequence[str], what: str = "hybrid_lm layers") -> list[str]:
    """The token mixer of every layer, from a code string or a list of mixer names."""
    if isinstance(layers, str):
        return expand_codes(layers, MIXER_CODES, what)
    names = list(layers)
    if not names:
        raise ConfigError(f"{what}: the layer list is empty; give one token mixer name per layer")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ConfigError(f"{what}[{i}]: expected a mixer name, got {name!r}")
        if get_mixer(name).kind != "token":  # an unknown name raises, listing the known ones
            raise ConfigError(
                f"{what}[{i}]: {name!r} is a channel mixer; each layer needs a token mixer "
                "(mamba, mamba2, attention, ...)"
            )
    return names


def moe_flags(
    n_layer: int, moe_every: int, moe_offset: int, moe_layers: Sequence[int] | None
) -> list[bool]:
    """Per layer: does its MLP become a mixture of experts?"""
    if moe_layers is not None:
        if moe_every:
            raise ConfigError(
                "hybrid_lm: give either moe_every/moe_offset or moe_layers, not both "
                f"(got moe_every={moe_every} and moe_layers={list(moe_layers)})"
            )
        indices = list(moe_layers)
        outside = [i for i in indices if not (isinstance(i, int) and 0 <= i < n_layer)]
        if outside:
            raise ConfigError(
                f"hybrid_lm: moe_layers {outside} are not layer indices 0..{n_layer - 1}"
            )
        if len(set(indices)) != len(indices):
            raise ConfigError(f"hybrid_lm: moe_layers lists a layer twice: {indices}")
        return [i in set(indices) for i in range(n_layer)]
    if moe_every < 0:
        raise ConfigError(f"hybrid_lm: moe_every must be >= 0 (0 = no MoE), got {moe_every}")
    if moe_every == 0:
        if moe_offset:
            raise ConfigError("hybrid_lm: moe_offset is set but moe_every is 0 (no MoE layers)")
        return [False] * n_layer
    if not 0 <= moe_offset < moe_every:
        raise ConfigError(
            f"hybrid_lm: need 0 <= moe_offset < moe_every, got moe_offset={moe_offset}, "
            f"moe_every={moe_every}"
        )
    return [i % moe_every == moe_offset for i in range(n_layer)]
