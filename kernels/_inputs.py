"""Checking kernel inputs, and the small steps every reference scan shares.

The public function of every op checks its inputs here before dispatching, so that every
implementation sees valid shapes and a mistake reads as one line: what was expected, what came.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def require_ndim(op: str, name: str, tensor: torch.Tensor, layouts: Mapping[int, str]) -> None:
    """``tensor`` must have one of the numbers of dimensions in ``layouts`` (ndim -> layout)."""
    if tensor.dim() not in layouts:
        wanted = " or ".join(layouts.values())
        raise ValueError(f"{op}: {name} must be {wanted}, got shape {tuple(tensor.shape)}")


def whole_number(op: str, name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int: Python's or numpy's, never a bool or a float that would be truncated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return int(value)


def require_state(op: str, name: str, state: torch.Tensor) -> None:
    """A decoding state is updated in place: an integer one would truncate every update, and
    one whose elements share memory (an ``expand``-ed tensor) would be written by several
    updates at once."""
    if not state.is_floating_point():
        raise TypeError(
            f"{op}: {name} is {state.dtype}, but it is updated in place with real values; "
            "allocate it as a float tensor (float32 for an SSM state)"
        )
    if any(stride == 0 and size > 1 for stride, size in zip(state.stride(), state.shape)):
        raise ValueError(
            f"{op}: {name} has shape {tuple(state.shape)} but strides {state.stride()}: its "
            "elements share memory (an expand()-ed tensor), and each is updated in place; "
            "give it its own memory (.clone())"
        )


def require_shape(
    op: str, name: str, tensor: torch.Tensor | None, expected: Sequence[int], layout: str
) -> None:
    """``tensor`` (skipped when None) must have exactly the shape ``expected``, named ``layout``."""
    if tensor is not None and tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must have shape {layout} = {tuple(expected)}, got {tuple(tensor.shape)}"
        )


def require_integers_beside(
    op: str, name: str, tensor: torch.Tensor, other_name: str, other: torch.Tensor, way_out: str
) -> None:
    """``tensor`` (indices: positions, labels) holds integers and lies on ``other``'s device."""
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be integers, got {tensor.dtype}")
    if tensor.device != other.device:
        raise ValueError(
            f"{op}: {name} are on {tensor.device} but {other_name} on {other.device}; {way_out}"
        )


def require_multiple(op: str, whole: str, size: int, part: str, parts: int) -> None:
    """``size`` (of ``whole``) must split evenly into ``parts`` (of ``part``)."""
    if parts < 1 or size % parts:
        raise ValueError(f"{op}: {whole}={size} must be a multiple of {part}={parts}")


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, otherwise float32 (half inputs accumulate in fp32)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def step_sizes(
    dt: torch.Tensor, bias: torch.Tensor | None, softplus: bool, dtype: torch.dtype
) -> torch.Tensor:
    """Δ = softplus(dt + bias) in ``dtype`` (bias / softplus only if given / asked).

    ``bias`` must broadcast against ``dt``.
    """
    dt = dt.to(dtype)
    if bias is not None:
        dt = dt + bias.to(dtype)
    return F.softplus(dt) if softplus else dt


def skip_and_gate(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """y + D ⊙ x (the skip connection), then y ⊙ silu(z) (the gate), each only if given.

    Computed in y's dtype; ``D`` must broadcast against ``x``.
    """
    if D is not None:
        y = y + x.to(y.dtype) * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def safe_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) with x clamped to where exp is a normal number of its dtype (with a margin of 1).

    Below that range exp returns a denormal or 0, and torch's vectorised exp falls back to a
    scalar path some 50x slower (strong decays over a chunk land there all the time); raising x
    changes a decay factor by at most e times the smallest normal number (3e-38 in float32).
    Above it exp overflows, and an inf masked out later still poisons the gradient (inf · 0).
    """
    info = torch.finfo(x.dtype)
    return torch.exp(x.clamp(math.log(info.tiny) + 1, math.log(info.max) - 1))
