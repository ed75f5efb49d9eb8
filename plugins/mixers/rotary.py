"""Rotary position embeddings (Su et al., "RoFormer", 2021), in the rotate-half layout used by
GPT-NeoX, Llama and flash-attn's ``RotaryEmbedding(interleaved=False)``.

For a head vector x, its first ``rotary_dim`` channels are split into halves (x1, x2) and rotated
pairwise by the angle pos · θ^(-2i / rotary_dim), i = 0 .. rotary_dim/2 - 1:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
so that q·k depends on positions only through their difference. Other channels pass unchanged.
"""

from __future__ import annotations

import torch


def apply_rotary(
    x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float
) -> torch.Tensor:
    """x: (B, H, L, head_dim), positions: (L,) integer -> x with rotated first rotary_dim channels."""
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    half = rotary_dim // 2
    exponents = torch.arange(half, dtype=compute_dtype, device=x.device) * (2.0 / rotary_dim)
    inverse_frequencies = theta**-exponents  # (half,)
    angles = positions.to(compute_dtype)[:, None] * inverse_frequencies  # (L, half)
    cos, sin = angles.cos(), angles.sin()
    rotated, passed = x[..., :rotary_dim].to(compute_dtype), x[..., rotary_dim:]
    x1, x2 = rotated[..., :half], rotated[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([rotated.to(x.dtype), passed], dim=-1)
