"""Compute kernels shared by every model: one folder per op.

Each op folder has ``reference.py`` (plain PyTorch, runs anywhere, float64-safe), ``triton.py``
(GPU kernels with their autograd) and ``__init__.py`` (the public function, which picks an
implementation through :func:`mambaverse.get_kernel`). The ops are imported on first use, so that
``import mambaverse.kernels`` stays cheap.
"""

import importlib
from typing import Any

# public name -> op folder that defines it
_EXPORTS: dict[str, str] = {}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
