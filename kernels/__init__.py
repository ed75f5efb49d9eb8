"""Compute kernels shared by every model: one folder per op.

Each op folder has ``reference.py`` (plain PyTorch, runs anywhere, float64-safe), ``triton.py``
(GPU kernels with their autograd) and ``__init__.py`` (the public function, which picks an
implementation through :func:`mambaverse.get_kernel`). The ops are imported on first use, so that
``import mambaverse.kernels`` stays cheap.
"""

import importlib
import sys
import types
from typing import Any

# public name -> op folder that defines it
_EXPORTS: dict[str, str] = {
    "selective_scan": "selective_scan",
    "selective_state_update": "selective_scan",
    "ssd_scan": "ssd_scan",
    "ssd_state_update": "ssd_scan",
    "causal_conv1d": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
    "attention": "attention",
    "gather_walks": "walks",
    "merge_walks": "walks",
    "conv_walks": "walks",
    "add_rms_norm": "add_rms_norm",
    "gated_rms_norm": "gated_rms_norm",
    "apply_rotary": "rotary",
    "cross_entropy": "cross_entropy",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _KernelsModule(types.ModuleType):
    """Keeps ``mambaverse.kernels.selective_scan`` the function, not the folder of the same name.

    Importing a sub-package binds it as an attribute of its parent; an op's folder shares its
    public function's name, so that binding would shadow the function for every later
    ``from mambaverse.kernels import selective_scan``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _KernelsModule
