"""The language models the suites compare: Mamba, Mamba-2, a hybrid and a Transformer.

All four are mambaverse backbones, so they share the embedding, the final norm, the LM head and
the training and decoding code; only the layers differ:

- Mamba / Mamba-2: ``mamba_lm`` (the published presets, e.g. ``mamba_130m``, ``mamba2_130m``);
- Transformer: ``hybrid_lm`` with every layer attention (rotary embeddings) + SwiGLU MLP, the
  attention kernel chosen per model (``kernels={"attention": impl}``: Triton, torch SDPA);
- hybrid: ``hybrid_lm`` with Jamba's ratio, one attention layer in eight (at index 4 of each
  period), Mamba elsewhere, every layer followed by a SwiGLU MLP.

"Matched size": the Transformer and the hybrid take the layer count whose total parameter count
(embeddings included, tied as Mamba's) is closest to the Mamba model's; the width is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import mambaverse

# size -> (Mamba preset, Mamba-2 preset) of about that many parameters
SIZES: dict[str, tuple[str, str]] = {
    "micro": ("mamba_micro", "mamba2_micro"),
    "130m": ("mamba_130m", "mamba2_130m"),
    "370m": ("mamba_370m", "mamba2_370m"),
    "790m": ("mamba_790m", "mamba2_780m"),
    "1.4b": ("mamba_1.4b", "mamba2_1.3b"),
    "2.8b": ("mamba_2.8b", "mamba2_2.7b"),
}
JAMBA_PERIOD, JAMBA_ATTENTION_AT = 8, 4  # Jamba: "mmmmammm", attention at index 4 of 8


@dataclass(frozen=True)
class LMSpec:
    """A language model to build: a label for tables and plots, its backbone and config."""

    label: str
    backbone: str
    config: dict[str, Any] = field(hash=False)

    def build(
        self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> nn.Module:
        """The model with fresh random weights, created directly on ``device``."""
        with torch.device(device):
            model = mambaverse.build_backbone(self.backbone, dict(self.config))
        return model.to(dtype) if dtype is not None else model

    def count_parameters(self) -> int:
        """Parameters (a tied embedding counted once), counted on the meta device."""
        return sum(p.numel() for p in self.build("meta").parameters())


def hybrid_pattern(n_layer: int) -> str:
    """Jamba's layer pattern cut to ``n_layer`` ("m" Mamba, "a" attention); a stack shorter
    than one period gets one attention layer in its middle."""
    attention = {i for i in range(n_layer) if i % JAMBA_PERIOD == JAMBA_ATTENTION_AT}
    attention = attention or {n_layer // 2}
    return "".join("a" if i in attention else "m" for i in range(n_layer))


def hybrid_lm_config(mamba: dict[str, Any], layers: str, head_dim: int = 64) -> dict[str, Any]:
    """A hybrid_lm of Mamba's width, vocabulary and tied embedding with the given layers
    ("m" Mamba with Mamba's mixer config, "a" attention with ``head_dim``-wide heads)."""
    mixer_config: dict[str, dict[str, Any]] = {}
    if "a" in layers:
        mixer_config["attention"] = {"num_heads": max(1, mamba["d_model"] // head_dim)}
    if "m" in layers:
        mixer_config["mamba"] = dict(mamba.get("mixer_config") or {})
    return {
        "vocab_size": mamba["vocab_size"],
        "pad_vocab_size_multiple": mamba.get("pad_vocab_size_multiple", 8),
        "d_model": mamba["d_model"],
        "layers": layers,
        "mixer_config": mixer_config,
        "tie_embeddings": True,
    }


def matched_layers(mamba: dict[str, Any], pattern: Callable[[int], str], head_dim: int) -> int:
    """The layer count whose ``pattern(n)`` hybrid_lm has the parameter count closest to the
    Mamba model's. Counts are linear in the layers: embedding and norm, plus one fixed count
    per attention layer and per Mamba layer, each measured once."""

    def count(layers: str) -> int:
        return LMSpec("", "hybrid_lm", hybrid_lm_config(mamba, layers, head_dim)).count_parameters()

    per_attention = count("aa") - count("a")
    shared = count("a") - per_attention
    per_mamba = count("m") - shared
    target = LMSpec("", "mamba_lm", mamba).count_parameters()

    def total(n: int) -> int:
        layers = pattern(n)
        return shared + layers.count("a") * per_attention + layers.count("m") * per_mamba

    return min(range(2, 4 * mamba["n_layer"] + 1), key=lambda n: abs(total(n) - target))


def lm_family(
    mamba: dict[str, Any],
    mamba2: dict[str, Any],
    models: Sequence[str] = ("mamba", "mamba2", "hybrid", "transformer"),
    attention_impls: Sequence[str | None] = (None,),
    match_params: bool = True,
    head_dim: int = 64,
) -> list[LMSpec]:
    """The compared models, from the configs of a Mamba and a Mamba-2 ``mamba_lm``.

    match_params: the hybrid and Transformer get the layer count (at least 2) matching the
    Mamba model's parameters; otherwise Mamba's own layer count (the synthetic tasks' 2-layer
    models). attention_impls: one Transformer per attention implementation (None = default).
    """

    def layers(pattern: Callable[[int], str]) -> str:
        n = matched_layers(mamba, pattern, head_dim) if match_params else mamba["n_layer"]
        return pattern(n)

    specs = []
    for name in models:
        if name == "mamba":
            specs.append(LMSpec("Mamba", "mamba_lm", mamba))
        elif name == "mamba2":
            specs.append(LMSpec("Mamba-2", "mamba_lm", mamba2))
        elif name == "hybrid":
            config = hybrid_lm_config(mamba, layers(hybrid_pattern), head_dim)
            specs.append(LMSpec(f"hybrid ({config['layers']})", "hybrid_lm", config))
        elif name == "transformer":
            config = hybrid_lm_config(mamba, layers(lambda n: "a" * n), head_dim)
            for impl in attention_impls:
                label = "Transformer" + (f" ({impl})" if impl else "")
                kernels = {"kernels": {"attention": impl}} if impl else {}
                specs.append(LMSpec(label, "hybrid_lm", {**config, **kernels}))
        else:
            raise mambaverse.ConfigError(
                f"unknown model {name!r}: choose from mamba, mamba2, hybrid, transformer"
            )
    return specs


def preset_family(size: str, **options: Any) -> list[LMSpec]:
    """:func:`lm_family` from the Mamba and Mamba-2 presets of a size (see :data:`SIZES`)."""
    if size not in SIZES:
        raise mambaverse.ConfigError(f"unknown size {size!r}: choose from {', '.join(SIZES)}")
    mamba, mamba2 = (mambaverse.model_config(name) for name in SIZES[size])
    return lm_family(mamba, mamba2, **options)


def attention_implementations(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The attention kernels that can run here, the plain-math reference left out (it builds
    the whole score matrix: the peers are the fast kernels)."""
    from mambaverse.dispatch import implementations

    return [
        name
        for name, spec in implementations("attention").items()
        if name != "reference"
        and spec.unavailable_reason(device.type, str(dtype).split(".")[-1]) is None
    ]
