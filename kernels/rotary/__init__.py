"""Rotary position embeddings (Su et al., "RoFormer", 2021) on attention's queries and keys.

The public function checks its inputs, then runs the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import operator

import torch

import mambaverse

from .._inputs import require_integers_beside, require_ndim, require_shape


def apply_rotary(
    x: torch.Tensor,
    positions: torch.Tensor,
    rotary_dim: int,
    theta: float,
    impl: str | None = None,
) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` channels of each head vector by its position, in the
    rotate-half layout of GPT-NeoX, Llama and flash-attn's ``apply_rotary_emb(interleaved=False)``::

        half = rotary_dim / 2,   ω_i = θ^(−2i / rotary_dim),   α_{t,i} = positions_t · ω_i
        (x1, x2) = (x[..., :half], x[..., half:rotary_dim])
        out = (x1 cos α − x2 sin α,  x2 cos α + x1 sin α,  x[..., rotary_dim:])

    so that q·k depends on the two positions only through their difference. The angles and the
    rotation are computed in float32 (float64 for float64 x); the result is in x's dtype.

    Shapes: x (B, heads, L, head_dim), any strides; positions (L,) integer; rotary_dim even, in
    2..head_dim. Returns a tensor of x's shape (the Triton path keeps x's memory layout).
    """
    op = "apply_rotary"
    require_ndim(op, "x", x, {4: "(B, heads, L, head_dim)"})
    head_dim = x.shape[-1]
    if isinstance(rotary_dim, bool) or not hasattr(rotary_dim, "__index__"):
        raise TypeError(f"{op}: rotary_dim must be an int, got {type(rotary_dim).__name__}")
    rotary_dim = operator.index(rotary_dim)
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(
            f"{op}: rotary_dim must be even and in 2..head_dim={head_dim}, got {rotary_dim}"
        )
    if not theta > 0:
        raise ValueError(f"{op}: theta (the rotary base) must be positive, got {theta}")
    require_shape(op, "positions", positions, (x.shape[2],), "(L,)")
    require_integers_beside(
        op,
        "positions",
        positions,
        "x",
        x,
        "make them on x's device (torch.arange(L, device=x.device))",
    )
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, positions, rotary_dim, float(theta))
