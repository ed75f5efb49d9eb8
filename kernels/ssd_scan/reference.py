"""Mamba-2 SSD scan in plain PyTorch: the chunked algorithm of the Mamba-2 paper.

Math (the semantics of Mamba-2's ``ssd_minimal_discrete`` / ``mamba_chunk_scan_combined``), per
batch b and head h, with state H_t ∈ R^{p×n} and a scalar decay per head:

    dt_t = softplus(dt_t + dt_bias)                      (bias and softplus only when asked)
    H_t  = exp(dt_t A_h) H_{t-1} + dt_t x_t B_t^T        H_{-1} = initial state (or 0)
    y_t  = H_t C_t + D_h x_t,  then  y_t · silu(z_t)

Because the decay is a scalar per head, a chunk of T steps is a masked matrix product (the
"quadratic" or attention-like form). With a_t = dt_t A_h, the cumulative sum s_t = a_0 + ... +
a_t inside the chunk, and the segment decay L[t, τ] = exp(s_t - s_τ) for τ <= t (0 above):

    y_t   = Σ_{τ<=t} L[t, τ] (C_t·B_τ) dt_τ x_τ      (within the chunk)
          + exp(s_t) H_in C_t                        (the state entering the chunk)
    H_out = exp(s_{T-1}) H_in + Σ_τ L[T-1, τ] dt_τ x_τ B_τ^T

The states entering the chunks follow the same recurrence one level up, with one step per
chunk; it is solved with a decay matrix over the chunks (as in ``ssd_minimal``), so a
block of chunks is a handful of batched matrix products. Blocks are sized to keep the (T × T)
tensors near ``BLOCK_ELEMENTS`` (fresh large tensors cost more than their arithmetic on a CPU);
a loop over blocks carries H. Exponents are clamped to the range where exp is a normal number,
so nothing overflows, not even above the diagonal before it is masked. Nothing loops over
steps, and lengths need no padding (a shorter last chunk is a block of its own).
"""

from __future__ import annotations

import torch

from .._inputs import compute_dtype, safe_exp, skip_and_gate, step_sizes

# About this many elements in one (b, h, chunks, T, T) tensor of a block.
BLOCK_ELEMENTS = 1 << 18


def _per_channel(D: torch.Tensor | None) -> torch.Tensor | None:
    """D (h,) or (h, p) as (h, p)-broadcastable: one skip weight per head, or per channel."""
    return D[:, None] if D is not None and D.dim() == 1 else D


def _causal(decay: torch.Tensor) -> torch.Tensor:
    """Zero above the diagonal of (..., T, T): step τ > t cannot reach step t."""
    steps = torch.arange(decay.shape[-1], device=decay.device)
    return decay.masked_fill(steps[:, None] < steps[None, :], 0.0)


def decay_within(cumulative: torch.Tensor) -> torch.Tensor:
    """L[t, τ] = exp(s_t - s_τ) for τ <= t, 0 above: (..., T) -> (..., T, T).

    From differences of the cumulative sums s, as the official kernel: precise while |s| stays
    moderate, which it does inside one chunk.
    """
    return _causal(safe_exp(cumulative[..., :, None] - cumulative[..., None, :]))


def decay_between(log_decay: torch.Tensor) -> torch.Tensor:
    """L[k, j] = exp(a_{j+1} + ... + a_k) for j <= k, 0 above: (..., K) -> (..., K, K).

    Sums of masked copies of a instead of differences of cumulative sums, which grow over a
    block of chunks (where a difference of two large sums would lose the small one).
    """
    steps = torch.arange(log_decay.shape[-1], device=log_decay.device)
    between = steps[:, None] > steps[None, :]  # i > j: the steps from j (excluded) up to k
    return _causal(safe_exp(torch.cumsum(torch.where(between, log_decay[..., :, None], 0.0), -2)))


def ssd_block(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K chunks of T steps at once, from the state entering the first one.

    x (b, g, h/g, K, T, p); dt (b, g, h/g, K, T); A (g, h/g, 1, 1); B, C (b, g, 1, K, T, n);
    state (b, g, h/g, p, n). Returns y (b, g, h/g, K, T, p) and the state leaving the block.
    """
    log_decay = dt * A  # a_t: (b, g, h/g, K, T)
    cumulative = torch.cumsum(log_decay, dim=-1)  # s_t, from the start of each chunk
    decay = decay_within(cumulative)  # L: (b, g, h/g, K, T, T)
    x_dt = x * dt[..., None]  # dt_τ x_τ

    # within each chunk: y_t = Σ_{τ<=t} L[t, τ] (C_t·B_τ) dt_τ x_τ
    y = ((C @ B.transpose(-1, -2)) * decay) @ x_dt
    # the state each chunk adds on its own: Σ_τ L[T-1, τ] dt_τ x_τ B_τ^T  (b, g, h/g, K, p, n)
    added = (x_dt * decay[..., -1, :, None]).transpose(-1, -2) @ B

    # One level up, one step per chunk: the state entering chunk k is the block's entering state
    # and every earlier chunk's own state, decayed through the chunks in between.
    chunk_log_decay = torch.nn.functional.pad(cumulative[..., -1], (1, 0))  # (b, g, h/g, K+1)
    states = torch.cat([state[..., None, :, :], added], dim=-3)  # (b, g, h/g, K+1, p, n)
    entering = decay_between(chunk_log_decay) @ states.flatten(-2)
    entering = entering.unflatten(-1, state.shape[-2:])  # (b, g, h/g, K+1, p, n)

    # from the state entering the chunk: exp(s_t) H_in C_t
    y = y + safe_exp(cumulative)[..., None] * (C @ entering[..., :-1, :, :].transpose(-1, -2))
    return y, entering[..., -1, :, :]


def _blocks(length: int, chunk: int, chunks_per_block: int) -> list[tuple[int, int, int]]:
    """(start, end, chunk length) of each block: whole chunks in groups, a shorter tail alone."""
    whole = length - length % chunk
    step = chunk * chunks_per_block
    spans = [(start, min(start + step, whole), chunk) for start in range(0, whole, step)]
    return spans + ([(whole, length, length - whole)] if whole < length else [])


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

    # Sequence-inner layouts: a block of steps is a block of rows of each matrix.
    x_s = x.to(dtype).reshape(batch, length, *grouped[1:], headdim).permute(0, 2, 3, 1, 4)
    dt_s = dt.reshape(batch, length, *grouped[1:]).permute(0, 2, 3, 1)  # (b, g, h/g, l)
    B_s = B.to(dtype).permute(0, 2, 1, 3)[:, :, None]  # (b, g, 1, l, n)
    C_s = C.to(dtype).permute(0, 2, 1, 3)[:, :, None]
    A_g = A.to(dtype).reshape(*grouped[1:], 1, 1)  # (g, h/g, 1, 1)
    if initial_states is None:
        state = x.new_zeros(*grouped, headdim, dstate, dtype=dtype)
    else:
        state = initial_states.to(dtype).reshape(*grouped, headdim, dstate)

    chunk = max(min(chunk_size, length), 1)  # at least 1: a length-0 sequence has no block
    chunks_per_block = max(1, BLOCK_ELEMENTS // max(batch * heads * chunk * chunk, 1))
    ys = [x_s.new_zeros(*grouped, 0, headdim)]  # (b, g, h/g, l, p) pieces along l
    for start, end, size in _blocks(length, chunk, chunks_per_block):

        def rows(t: torch.Tensor) -> torch.Tensor:  # (..., l, k) -> this block's (..., K, T, k)
            return t[..., start:end, :].unflatten(-2, (-1, size))  # noqa: B023 (used at once)

        x_b, dt_b, B_b, C_b = rows(x_s), rows(dt_s[..., None])[..., 0], rows(B_s), rows(C_s)
        y, state = ssd_block(x_b, dt_b, A_g, B_b, C_b, state)
        ys.append(y.flatten(-3, -2))

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
