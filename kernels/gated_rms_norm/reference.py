"""The gated, grouped RMSNorm in plain PyTorch: float32 (or float64) throughout, one rounding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inputs import compute_dtype


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    group_size: int,
    eps: float = 1e-5,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.gated_rms_norm` (see there)."""
    dtype = compute_dtype(x, z, weight)
    v, gate = x.to(dtype), F.silu(z.to(dtype))
    if not norm_before_gate:
        v = v * gate
    groups = v.unflatten(-1, (-1, group_size))  # (..., groups, group_size)
    y = F.rms_norm(groups, (group_size,), eps=eps).flatten(-2) * weight.to(dtype)
    if norm_before_gate:
        y = y * gate
    return y.to(x.dtype)
