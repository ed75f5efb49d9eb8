"""Mamba-2 SSD scan in plain PyTorch: the chunked algorithm of the Mamba-2 paper, one chunk at a time.

Math (the semantics of Mamba-2's ``ssd_minimal_discrete`` / ``mamba_chunk_scan_combined``), per
batch b and head h, with state H_t ∈ R^{p×n} and a scalar decay per head:

    dt_t = softplus(dt_t + dt_bias)                      (bias and softplus only when asked)
    H_t  = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T        H_{-1} = initial state (or 0)
    y_t  = H_t C_t + D_h x_t,  then  y_t · silu(z_t)

Because the decay is a scalar per head, a chunk of T steps is a masked matrix product (the
"quadratic" or attention-like form). With a_t = dt_t A_h and the cumulative sum
s_t = a_0 + ... + a_t inside the chunk:

    y_t = Σ_{τ<=t} exp(s_t - s_τ) (C_t·B_τ) dt_τ x_τ      (within the chunk)
        + exp(s_t) H_in C_t                               (the state entering the chunk)
    H_out = exp(s_{T-1}) H_in + Σ_τ exp(s_{T-1} - s_τ) dt_τ x_τ B_τ^T

Only exponents s_t - s_τ with τ <= t (never positive for A < 0) are exponentiated: the upper
triangle is masked to -inf first. A loop over chunks carries H; nothing loops over steps, and the
last chunk may be shorter, so no padding is needed.
"""

from __future__ import annotations

import torch

from .._inputs import compute_dtype, skip_and_gate, step_sizes


def _per_channel(D: torch.Tensor | None) -> torch.Tensor | None:
    """D (h,) or (h, p) as (h, p)-broadcastable: one skip weight per head, or per channel."""
    return D[:, None] if D is not None and D.dim() == 1 else D


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation of :func:`mambaverse.kernels.ssd_scan` (see there)."""
    dtype = compute_dtype(x, dt, A, B, C)
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2:]
    grouped = (batch, groups, heads // groups)  # head h = (group, head in group)

    dt = step_sizes(dt, dt_bias, dt_softplus, dtype)

    # Sequence-inner layouts, so that a chunk is a block of rows of each matrix.
    x_s = x.to(dtype).reshape(batch, length, *grouped[1:], headdim).permute(0, 2, 3, 1, 4)
    dt_s = dt.reshape(batch, length, *grouped[1:]).permute(0, 2, 3, 1)  # (b, g, h/g, l)
    B_s = B.to(dtype).permute(0, 2, 1, 3)  # (b, g, l, n)
    C_s = C.to(dtype).permute(0, 2, 1, 3)
    A_g = A.to(dtype).reshape(*grouped[1:], 1)  # (g, h/g, 1)

    if initial_states is None:
        state = x.new_zeros(*grouped, headdim, dstate, dtype=dtype)
    else:
        state = initial_states.to(dtype).reshape(*grouped, headdim, dstate)
    ys = []
    for start in range(0, length, chunk_size):
        steps = slice(start, start + chunk_size)
        x_c, dt_c = x_s[..., steps, :], dt_s[..., steps]  # (b, g, h/g, T, p), (b, g, h/g, T)
        B_c, C_c = B_s[:, :, None, steps], C_s[:, :, None, steps]  # (b, g, 1, T, n)
        log_decay = torch.cumsum(dt_c * A_g, dim=-1)  # s_t: (b, g, h/g, T)

        # within the chunk: y_t = Σ_{τ<=t} exp(s_t - s_τ) (C_t·B_τ) dt_τ x_τ
        steps_here = x_c.shape[-2]
        step_index = torch.arange(steps_here, device=x.device)
        causal = step_index[:, None] >= step_index[None, :]  # τ <= t
        gaps = log_decay[..., :, None] - log_decay[..., None, :]  # s_t - s_τ: (..., T, T)
        decay = torch.exp(gaps.masked_fill(~causal, float("-inf")))
        scores = (C_c @ B_c.transpose(-1, -2)) * decay * dt_c[..., None, :]
        y = scores @ x_c
        # from the state entering the chunk: exp(s_t) H_in C_t
        y = y + torch.exp(log_decay)[..., None] * (C_c @ state.transpose(-1, -2))
        ys.append(y)

        # H_out = exp(s_{T-1}) H_in + Σ_τ exp(s_{T-1} - s_τ) dt_τ x_τ B_τ^T
        weight = torch.exp(log_decay[..., -1:] - log_decay) * dt_c  # (b, g, h/g, T)
        added = (x_c * weight[..., None]).transpose(-1, -2) @ B_c  # (b, g, h/g, p, n)
        state = torch.exp(log_decay[..., -1, None, None]) * state + added

    y = torch.cat(ys, dim=-2).permute(0, 3, 1, 2, 4).reshape(batch, length, heads, headdim)
    y = skip_and_gate(y, x, _per_channel(D), z).to(x.dtype)
    final = state.reshape(batch, heads, headdim, dstate)
    return (y, final) if return_final_states else y


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
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.ssd_state_update`."""
    dtype = compute_dtype(state, x, dt, A)
    batch, heads, headdim, dstate = state.shape
    groups = B.shape[1]
    grouped = (batch, groups, heads // groups)

    dt = step_sizes(dt, dt_bias, dt_softplus, dtype)

    decay = torch.exp(dt * A.to(dtype)).reshape(*grouped, 1, 1)
    dt_x = (dt[..., None] * x.to(dtype)).reshape(*grouped, headdim, 1)
    h = decay * state.to(dtype).reshape(*grouped, headdim, dstate)
    h = h + dt_x * B.to(dtype)[:, :, None, None, :]
    state.copy_(h.reshape(batch, heads, headdim, dstate))

    y = (h @ C.to(dtype)[:, :, None, :, None]).reshape(batch, heads, headdim)  # H C
    return skip_and_gate(y, x, _per_channel(D), z).to(x.dtype)
