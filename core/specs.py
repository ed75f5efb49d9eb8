"""The typed specs a plugin returns from its hooks.

Each hook returns a list of one of these. They are plain dataclasses so that a plugin module can
build them without importing torch: callables may be given as ``"module:function"`` strings inside
the plugin's own package and are imported only when first used.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

Target = Callable[..., Any] | str

TASKS = ("vision", "lm", "vlm")
MIXER_KINDS = ("token", "channel")


def resolve_target(target: Target) -> Callable[..., Any]:
    """Import ``"package.module:attribute"`` (or return a callable unchanged)."""
    return target if callable(target) else _import_target(target)


@cache
def _import_target(target: str) -> Callable[..., Any]:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"target {target!r} is not of the form 'package.module:function'")
    module = importlib.import_module(module_name)
    try:
        value = module
        for part in attribute.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise ImportError(
            f"target {target!r}: module {module_name!r} has no {attribute!r}"
        ) from None
    return value


@dataclass(frozen=True)
class KernelSpec:
    """One implementation of a compute op.

    op:        the op's name, e.g. ``"selective_scan"``; every implementation of an op has the
               public function's signature (without ``impl=``).
    impl:      the implementation's name, e.g. ``"reference"``, ``"triton"``, ``"sdpa"``.
    fn:        the function, or ``"module:function"`` imported on first use.
    devices:   device types it runs on (``"cpu"``, ``"cuda"``, ...).
    dtypes:    dtypes it accepts, by torch name (``"float32"``, ``"bfloat16"``, ...).
    requires:  importable modules it needs (e.g. ``("triton",)``); checked without importing them.
    description: one line for ``mambaverse kernels``.
    """

    op: str
    impl: str
    fn: Target
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
    requires: tuple[str, ...] = ()
    description: str = ""

    def unavailable_reason(self, device: str | None = None, dtype: str | None = None) -> str | None:
        """Why this implementation cannot run here (``None`` when it can)."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install {module})"
        if device is not None and device not in self.devices:
            interpreted = (
                device == "cpu"
                and "triton" in self.requires
                and os.environ.get("TRITON_INTERPRET") == "1"
            )
            if not interpreted:
                hint = (
                    " (set TRITON_INTERPRET=1 to interpret it on the CPU)"
                    if "triton" in self.requires
                    else ""
                )
                return f"runs on {', '.join(self.devices)}, not on {device}{hint}"
        if device == "cuda" and "cuda" in self.devices:
            import torch

            if not torch.cuda.is_available():
                return "no CUDA device is visible"
        if dtype is not None and dtype not in self.dtypes:
            return f"supports {', '.join(self.dtypes)}, not {dtype}"
        return None

    def available(self, device: str | None = None, dtype: str | None = None) -> bool:
        return self.unavailable_reason(device, dtype) is None

    def load(self) -> Callable[..., Any]:
        return resolve_target(self.fn)


@dataclass(frozen=True)
class ScanSpec:
    """A way to turn a 2-D token grid into sequences and back.

    flatten: ``(B, H, W, C) -> (B, K, L, C)``, K sequences of length L.
    merge:   ``(B, K, L, C), H, W -> (B, H, W, C)``, folding each sequence back onto the grid
             and summing, so ``merge(flatten(x), H, W) == coverage * x`` where ``coverage`` is
             how many of the K sequences visit each cell.
    Both take the same keyword options (e.g. ``step=`` for the atrous scan).
    num_sequences: K for the default options.
    """

    name: str
    flatten: Target
    merge: Target
    num_sequences: int = 1
    description: str = ""

    def load(self) -> tuple[Callable[..., Any], Callable[..., Any]]:
        return resolve_target(self.flatten), resolve_target(self.merge)


@dataclass(frozen=True)
class MixerSpec:
    """A layer that mixes tokens (along the sequence) or channels (per token).

    factory: ``factory(dim, **config) -> nn.Module`` mapping ``(B, L, dim) -> (B, L, dim)``.
             Its keyword parameters are the mixer's config keys; unknown keys are rejected.
    kind:    ``"token"`` or ``"channel"``.
    """

    name: str
    factory: Target
    kind: Literal["token", "channel"] = "token"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in MIXER_KINDS:
            raise ValueError(
                f"MixerSpec {self.name!r}: kind must be one of {MIXER_KINDS}, got {self.kind!r}"
            )

    def load(self) -> Callable[..., Any]:
        return resolve_target(self.factory)


@dataclass(frozen=True)
class BackboneSpec:
    """A model family and its named presets.

    builder: ``builder(**config) -> nn.Module``; its keyword parameters are the valid config keys
             (a model class whose ``__init__`` takes keywords is the usual builder).
    task:    ``"vision"`` (image classifiers / feature extractors), ``"lm"`` (causal language
             models) or ``"vlm"`` (vision-language models).
    presets: preset name -> config overrides for the builder.
    hf_model_types: Hugging Face ``config.json`` ``model_type`` -> converter
             ``convert(hf_config: dict, tensors: dict[str, Tensor]) -> (config, state_dict)``
             that :func:`mambaverse.load_pretrained` uses to import such a checkpoint directory.
    hf_export: ``export(model) -> (hf_config, tensors)``, the inverse, that
             :func:`mambaverse.save_hf` uses to write a checkpoint transformers loads.
    """

    name: str
    builder: Target
    task: Literal["vision", "lm", "vlm"] = "vision"
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    hf_model_types: Mapping[str, Target] = field(default_factory=dict)
    hf_export: Target | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"BackboneSpec {self.name!r}: task must be one of {TASKS}, got {self.task!r}"
            )

    def load(self) -> Callable[..., Any]:
        return resolve_target(self.builder)


@dataclass(frozen=True)
class DatasetSpec:
    """A training dataset that a config's ``data.name`` can pick (``mambaverse train``).

    options: its schema, a :class:`mambaverse.train.data.DatasetOptions` subclass (pydantic): the
             keys of the config's ``data`` section. The class, or ``"module:Class"``.
    build:   ``build(options) -> Splits`` (train and test datasets), or ``"module:function"``.
    task:    the model task its items are for: ``"vision"``, ``"lm"`` or ``"vlm"``.
    """

    name: str
    options: Target
    build: Target
    task: Literal["vision", "lm", "vlm"] = "vision"
    description: str = ""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"DatasetSpec {self.name!r}: task must be one of {TASKS}, got {self.task!r}"
            )

    def load(self) -> tuple[Any, Callable[..., Any]]:
        """``(options class, build function)``, imported on first use."""
        return resolve_target(self.options), resolve_target(self.build)
