"""Rotary embeddings in plain PyTorch: the angles and the rotation in float32 (float64 for
float64 inputs), the result in x's dtype."""

from __future__ import annotations

import torch

from .._inputs import compute_dtype


def frequencies(
    rotary_dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """ω_i = θ^(−2i / rotary_dim) for i < rotary_dim / 2, (rotary_dim / 2,) in ``dtype``."""
    exponents = torch.arange(rotary_dim // 2, dtype=dtype, device=device) * (2.0 / rotary_dim)
    return theta**-exponents


def apply_rotary(
    x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.apply_rotary` (see there)."""
    dtype = compute_dtype(x)
    half = rotary_dim // 2
    angles = positions.to(dtype)[:, None] * frequencies(rotary_dim, theta, dtype, x.device)
    cos, sin = angles.cos(), angles.sin()
    rotated, passed = x[..., :rotary_dim].to(dtype), x[..., rotary_dim:]
    x1, x2 = rotated[..., :half], rotated[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([rotated.to(x.dtype), passed], dim=-1)
