"""Mamba-1 selective scan in plain PyTorch: chunks of time, a parallel scan inside each chunk.

Math (the semantics of Mamba's ``selective_scan_ref``), per batch b and channel d, state h_t ∈ R^n:

    Δ_t = softplus(δ_t + δ_bias)                   (bias and softplus only when asked)
    h_t = exp(Δ_t A_d) ⊙ h_{t-1} + Δ_t u_t B_t     h_{-1} = 0
    y_t = <C_t, h_t> + D_d u_t,  then  y_t · silu(z_t)

How: the sequence is cut into chunks of T steps that are processed one after another (a loop
over chunks, never over steps). Inside a chunk the recurrence is solved by a parallel scan that
pairs neighbouring steps (log2 T rounds). It only ever multiplies decays exp(Δ A) — no division
by a cumulative product, no exp of a positive number — so it cannot overflow, float64 stays
exact, and autograd differentiates it as written.

Chunks also keep every temporary near ``CHUNK_ELEMENTS`` elements: on a CPU the cost of the scan
is memory traffic, and fresh multi-megabyte tensors that miss the cache cost more than the
arithmetic. Tensors are time-major inside, (T, b, g, d/g, n), so that the even/odd steps the scan
pairs are whole contiguous blocks.
"""

from __future__ import annotations

import torch

from .._inputs import compute_dtype, safe_exp, skip_and_gate, step_sizes

# About this many elements in one (T, b, d, n) temporary; T follows from b·d·n.
CHUNK_ELEMENTS = 1 << 18
# Fewer steps per chunk would make the loop over chunks a loop over (almost) every step.
MIN_CHUNK = 16


def chunk_length(length: int, batch: int, dim: int, dstate: int) -> int:
    """T: the largest power of two with T·b·d·n <= CHUNK_ELEMENTS, at least MIN_CHUNK."""
    fits = max(CHUNK_ELEMENTS // max(batch * dim * dstate, 1), 1)  # an empty batch: any T
    return min(max(1 << (fits.bit_length() - 1), MIN_CHUNK), max(length, 1))


def linear_scan(decay: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = decay_t ⊙ h_{t-1} + x_t along dim 0, starting from h_{-1} = h0.

    decay, x: (L, *S); h0: (*S). Returns h: (L, *S).

    Steps 2k and 2k+1 compose into one step (decay a_{2k+1} a_{2k}, input x_{2k+1} + a_{2k+1}
    x_{2k}); scanning those L/2 pair-steps gives the state after every odd step, and each even
    step is then one step on from the state before its pair.
    """
    steps = x.shape[0]
    if steps == 1:
        return torch.addcmul(x, decay, h0)
    if steps % 2:  # scan all but the last step, then take that one
        h = linear_scan(decay[:-1], x[:-1], h0)
        return torch.cat([h, torch.addcmul(x[-1:], decay[-1:], h[-1])])
    a_even, a_odd = decay[0::2], decay[1::2]
    x_even, x_odd = x[0::2], x[1::2]
    h_odd = linear_scan(a_odd * a_even, torch.addcmul(x_odd, a_odd, x_even), h0)
    h_before_pair = torch.cat([h0[None], h_odd[:-1]])
    h_even = torch.addcmul(x_even, a_even, h_before_pair)
    return torch.stack([h_even, h_odd], dim=1).flatten(0, 1)


def scan_in_chunks(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    chunk: int,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`selective_scan` with an explicit chunk length T (any T >= 1 gives the same result)."""
    dtype = compute_dtype(u, delta, A, B, C)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    B = B if B.dim() == 4 else B[:, None]  # (b, g, n, l)
    C = C if C.dim() == 4 else C[:, None]
    groups = B.shape[1]

    bias = None if delta_bias is None else delta_bias[:, None]
    delta = step_sizes(delta, bias, delta_softplus, dtype)

    def time_major(t: torch.Tensor) -> torch.Tensor:  # (b, d, l) -> (l, b, g, d/g, 1)
        t = t.reshape(batch, groups, dim // groups, length).permute(3, 0, 1, 2)
        return t.contiguous()[..., None]

    delta_t = time_major(delta)
    delta_u_t = time_major(delta * u.to(dtype))
    B_t = B.to(dtype).permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]  # (l, b, g, 1, n)
    C_t = C.to(dtype).permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]  # (l, b, g, 1, n)
    A_g = A.to(dtype).reshape(groups, dim // groups, dstate)  # (g, d/g, n)

    state = u.new_zeros(batch, groups, dim // groups, dstate, dtype=dtype)
    ys = []
    for start in range(0, length, chunk):
        steps = slice(start, start + chunk)
        decay = safe_exp(delta_t[steps] * A_g)  # exp(Δ A): (T, b, g, d/g, n)
        h = linear_scan(decay, delta_u_t[steps] * B_t[steps], state)
        ys.append(C_t[steps] @ h.transpose(-1, -2))  # <C_t, h_t>: (T, b, g, 1, d/g)
        state = h[-1]

    if not ys:  # length 0: no step, an empty y and the zero state
        ys = [C_t.new_zeros(0, batch, groups, 1, dim // groups)]
    y = torch.cat(ys).reshape(length, batch, dim).permute(1, 2, 0).contiguous()  # (b, d, l)
    y = skip_and_gate(y, u, None if D is None else D[:, None], z).to(u.dtype)
    return (y, state.reshape(batch, dim, dstate)) if return_last_state else y


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of :func:`mambaverse.kernels.selective_scan` (see there)."""
    batch, dim, length = u.shape
    chunk = chunk_length(length, batch, dim, A.shape[1])
    return scan_in_chunks(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk
    )


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
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.selective_state_update`."""
    dtype = compute_dtype(state, x, dt, A)
    batch, dim, dstate = state.shape
    B = B if B.dim() == 3 else B[:, None]  # (b, g, n)
    C = C if C.dim() == 3 else C[:, None]
    groups = B.shape[1]

    dt = step_sizes(dt, dt_bias, dt_softplus, dtype)
    grouped = (batch, groups, dim // groups)

    decay = torch.exp(dt[..., None] * A.to(dtype)).reshape(*grouped, dstate)
    dt_x = (dt * x.to(dtype)).reshape(*grouped, 1)
    h = decay * state.to(dtype).reshape(*grouped, dstate) + dt_x * B.to(dtype)[:, :, None, :]
    state.copy_(h.reshape(batch, dim, dstate))

    y = torch.matmul(h, C.to(dtype)[..., None]).reshape(batch, dim)  # <C, h>
    return skip_and_gate(y, x, D, z).to(x.dtype)
