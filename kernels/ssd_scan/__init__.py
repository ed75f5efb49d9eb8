"""Mamba-2 SSD (state-space duality) chunked scan and its one-step state update.

Both public functions check their inputs, then run the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import (
    require_multiple,
    require_ndim,
    require_shape,
    require_state,
    whole_number,
)

SCAN = "ssd_scan"
STEP = "ssd_state_update"


def _check_heads(
    op: str, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, heads: int, headdim: int
) -> None:
    """B, C: the last two dims are (g, n) with g dividing h; C shaped as B; D (h,) or (h, p)."""
    require_multiple(op, "h", heads, "the number of groups of B, g", B.shape[-2])
    require_shape(op, "C", C, B.shape, "B's shape")
    if D is not None:
        require_ndim(op, "D", D, {1: "(h,)", 2: "(h, p)"})
        require_shape(op, "D", D, (heads, headdim)[: D.dim()], "(h,)" if D.dim() == 1 else "(h, p)")


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    impl: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan of Mamba-2: a state-space model whose decay is one scalar per head.

    Per batch b and head h, with state H_t ∈ R^{p×n} and H_{-1} = ``initial_states`` (or 0)::

        Δ_t = softplus(dt_t + dt_bias)               (bias / softplus only if given / asked)
        H_t = exp(Δ_t A_h) H_{t-1} + Δ_t x_t B_t^T   (x_t ∈ R^p, B_t ∈ R^n)
        y_t = H_t C_t + D_h x_t                      (D term only if D is given)
        y_t = y_t · silu(z_t)                        (only if z is given)

    computed in chunks of ``chunk_size`` steps (any length; the result does not depend on it).
    The state must decay: Δ_t A_h ≤ 0 (A < 0 and Δ ≥ 0, which ``dt_softplus`` guarantees), as in
    every Mamba-2; the Triton kernels rely on it (a growing state's exponents are clamped at 0
    there), and checking it would wait for the GPU on every call. The reference computes any sign.
    Shapes: x, z (b, l, h, p); dt (b, l, h); A, dt_bias (h,); B, C (b, l, g, n), head h reading
    group h // (h/g); D (h,) or (h, p); initial_states (b, h, p, n).
    Returns y (b, l, h, p) in x's dtype, and with ``return_final_states`` also H_{l-1}
    (b, h, p, n) in float32 (float64 for float64 inputs).
    """
    op = SCAN
    require_ndim(op, "x", x, {4: "(b, l, h, p)"})
    batch, length, heads, headdim = x.shape
    require_shape(op, "dt", dt, (batch, length, heads), "(b, l, h)")
    require_shape(op, "A", A, (heads,), "(h,)")
    require_ndim(op, "B", B, {4: "(b, l, g, n)"})
    groups, dstate = B.shape[2:]
    require_shape(op, "B", B, (batch, length, groups, dstate), "(b, l, g, n)")
    _check_heads(op, B, C, D, heads, headdim)
    chunk_size = whole_number(op, "chunk_size", chunk_size, 1)
    require_shape(op, "z", z, x.shape, "(b, l, h, p)")
    require_shape(op, "dt_bias", dt_bias, (heads,), "(h,)")
    states = (batch, heads, headdim, dstate)
    require_shape(op, "initial_states", initial_states, states, "(b, h, p, n)")
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        dt_softplus=dt_softplus,
        initial_states=initial_states,
        return_final_states=return_final_states,
    )


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    impl: str | None = None,
) -> torch.Tensor:
    """One step of :func:`ssd_scan` for generation: updates ``state`` in place.

    ::

        Δ = softplus(dt + dt_bias)              (bias / softplus only if given / asked)
        H ← exp(Δ A_h) H + Δ x B^T
        y = H C + D x,  then  y · silu(z)

    Shapes: state (b, h, p, n), updated in place; x, z (b, h, p); dt (b, h); A, dt_bias (h,);
    B, C (b, g, n) with head h reading group h // (h/g); D (h,) or (h, p).
    Returns y (b, h, p) in x's dtype. Stepping through a sequence reproduces :func:`ssd_scan`.
    """
    op = STEP
    require_ndim(op, "state", state, {4: "(b, h, p, n)"})
    require_state(op, "state", state)
    batch, heads, headdim, dstate = state.shape
    require_shape(op, "x", x, (batch, heads, headdim), "(b, h, p)")
    require_shape(op, "dt", dt, (batch, heads), "(b, h)")
    require_shape(op, "A", A, (heads,), "(h,)")
    require_ndim(op, "B", B, {3: "(b, g, n)"})
    require_shape(op, "B", B, (batch, B.shape[1], dstate), "(b, g, n)")
    _check_heads(op, B, C, D, heads, headdim)
    require_shape(op, "z", z, x.shape, "(b, h, p)")
    require_shape(op, "dt_bias", dt_bias, (heads,), "(h,)")
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
