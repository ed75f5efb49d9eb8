"""Residual add and RMSNorm in plain PyTorch: the sum in float32 (or float64), then
``F.rms_norm`` and the weight on that sum; y in weight's dtype, s in the residual's dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inputs import compute_dtype


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of :func:`mambaverse.kernels.add_rms_norm` (see there)."""
    dtype = compute_dtype(x, residual, weight)
    s = x.to(dtype) if residual is None else x.to(dtype) + residual.to(dtype)
    y = F.rms_norm(s, (s.shape[-1],), eps=eps) * weight.to(dtype)
    return y.to(weight.dtype), s.to(residual_dtype)
