"""Mamba-1 selective scan and its one-step state update (for generation).

Both public functions check their inputs, then run the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_multiple, require_ndim, require_shape, require_state

SCAN = "selective_scan"
STEP = "selective_state_update"


def _check_B_C(
    op: str, B: torch.Tensor, C: torch.Tensor, batch: int, dim: int, dstate: int, *time: int
) -> None:
    """B and C: (b, n, *time) or grouped (b, g, n, *time) with g dividing d; C shaped as B."""
    suffix = ", l" if time else ""
    plain, grouped = f"(b, n{suffix})", f"(b, g, n{suffix})"
    for name, t in (("B", B), ("C", C)):
        require_ndim(op, name, t, {2 + len(time): plain, 3 + len(time): grouped})
        if t.dim() == 2 + len(time):
            require_shape(op, name, t, (batch, dstate, *time), plain)
        else:
            require_multiple(op, "d", dim, f"the number of groups of {name}, g", t.shape[1])
            require_shape(op, name, t, (batch, t.shape[1], dstate, *time), grouped)
    require_shape(op, "C", C, B.shape, "B's shape")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    impl: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The selective state-space scan of Mamba (S6), per batch b and channel d.

    With state h_t ∈ R^n per (b, d), h_{-1} = 0::

        Δ_t = softplus(δ_t + δ_bias)                   (bias / softplus only if given / asked)
        h_t = exp(Δ_t A_d) ⊙ h_{t-1} + Δ_t u_t B_t     (A_d: row d of A, B_t ∈ R^n)
        y_t = <C_t, h_t> + D_d u_t                     (D term only if D is given)
        y_t = y_t · silu(z_t)                          (only if z is given)

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l), or grouped (b, g, n, l) where
    channel d reads group d // (d/g); D, delta_bias (d,).
    Returns y (b, d, l) in u's dtype, and with ``return_last_state`` also h_{l-1} (b, d, n) in
    float32 (float64 for float64 inputs), the state to decode from: it carries no gradient,
    whichever implementation runs (the Triton kernels do not differentiate it).
    """
    op = SCAN
    require_ndim(op, "u", u, {3: "(b, d, l)"})
    batch, dim, length = u.shape
    require_shape(op, "delta", delta, (batch, dim, length), "(b, d, l)")
    require_ndim(op, "A", A, {2: "(d, n)"})
    dstate = A.shape[1]
    require_shape(op, "A", A, (dim, dstate), "(d, n)")
    _check_B_C(op, B, C, batch, dim, dstate, length)
    require_shape(op, "D", D, (dim,), "(d,)")
    require_shape(op, "z", z, (batch, dim, length), "(b, d, l)")
    require_shape(op, "delta_bias", delta_bias, (dim,), "(d,)")
    kernel = mambaverse.get_kernel(op, impl=impl, device=u.device, dtype=u.dtype)
    out = kernel(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    if return_last_state:
        y, last = out
        return y, last.detach()
    return out


def selective_state_update(
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
    """One step of :func:`selective_scan` for generation: updates ``state`` in place.

    ::

        Δ = softplus(dt + dt_bias)            (bias / softplus only if given / asked)
        state ← exp(Δ A) ⊙ state + Δ x B
        y = <C, state> + D x,  then  y · silu(z)

    Shapes: state (b, d, n), updated in place; x, dt, z (b, d); A (d, n); B, C (b, n) or
    grouped (b, g, n) with channel d reading group d // (d/g); D, dt_bias (d,).
    Returns y (b, d) in x's dtype. Stepping through a sequence from a zero state gives the
    outputs and last state of :func:`selective_scan`.
    """
    op = STEP
    require_ndim(op, "state", state, {3: "(b, d, n)"})
    require_state(op, "state", state)
    batch, dim, dstate = state.shape
    for name, t in (("x", x), ("dt", dt), ("z", z)):
        require_shape(op, name, t, (batch, dim), "(b, d)")
    require_shape(op, "A", A, (dim, dstate), "(d, n)")
    _check_B_C(op, B, C, batch, dim, dstate)
    require_shape(op, "D", D, (dim,), "(d,)")
    require_shape(op, "dt_bias", dt_bias, (dim,), "(d,)")
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
