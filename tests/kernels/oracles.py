"""Tiny sequential oracles: each kernel's math written as a plain loop, in float64 by default.

The one place in the project where a loop over every time step is allowed. Written from the
formulas alone, sharing no code with the kernels, so that a test comparing the two can fail.
Other test files import them: ``from tests.kernels.oracles import selective_scan_oracle``.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out - ref‖ / ‖ref‖, in float64."""
    out, ref = out.detach().to(F64), ref.detach().to(F64)
    return ((out - ref).norm() / ref.norm()).item()


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def selective_scan_oracle(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, dtype=F64
):
    """Mamba-1: h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = <C_t, h_t> + D u_t, y·silu(z).

    u, delta, z (b, d, l); A (d, n); B, C (b, n, l) or (b, g, n, l). Returns y, last state.
    """
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    group_of_channel = torch.arange(dim) // (dim // B.shape[1])
    B, C = B[:, group_of_channel], C[:, group_of_channel]  # (b, d, n, l)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = softplus(delta)
    h = torch.zeros(batch, dim, A.shape[1], dtype=dtype)
    y = torch.zeros(batch, dim, length, dtype=dtype)
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * u[:, :, t, None] * B[..., t]
        y[:, :, t] = (h * C[..., t]).sum(-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * silu(z.to(dtype))
    return y, h


def ssd_oracle(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    initial_states=None,
    dtype=F64,
):
    """Mamba-2 SSD: h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, y·silu(z).

    x, z (b, l, h, p); dt (b, l, h); A (h,); B, C (b, l, g, n); D (h,) or (h, p);
    initial_states (b, h, p, n). Returns y (b, l, h, p), final state (b, h, p, n).
    """
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    batch, length, heads, headdim = x.shape
    group_of_head = torch.arange(heads) // (heads // B.shape[2])
    B, C = B[:, :, group_of_head], C[:, :, group_of_head]  # (b, l, h, n)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = softplus(dt)
    h = torch.zeros(batch, heads, headdim, B.shape[-1], dtype=dtype)
    if initial_states is not None:
        h = initial_states.to(dtype).clone()
    y = torch.zeros_like(x)
    for t in range(length):
        step = dt[:, t, :, None, None]  # (b, h, 1, 1)
        h = torch.exp(step * A[:, None, None]) * h + step * x[:, t, :, :, None] * B[:, t, :, None]
        y[:, t] = (h * C[:, t, :, None]).sum(-1)
    if D is not None:
        D = D.to(dtype)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * silu(z.to(dtype))
    return y, h


def causal_conv1d_oracle(x, weight, bias=None, activation=None, dtype=F64):
    """y_t = Σ_k weight[:, k] x_{t-(w-1)+k} + bias (x_j = 0 for j < 0), then silu if asked."""
    x, weight = x.to(dtype), weight.to(dtype)
    width = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(x.shape[2]):
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                y[:, :, t] += weight[:, k] * x[:, :, source]
    if bias is not None:
        y = y + bias.to(dtype)[:, None]
    return silu(y) if activation in ("silu", "swish") else y


def attention_oracle(q, k, v, causal=False, scale=None, dtype=F64):
    """softmax(q k^T · scale) v per head; query head i reads kv head i // (h / h_kv).

    Causal masks are aligned to the end: query r (of l) sees keys c <= r + (s - l).
    """
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    batch, heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    out = torch.zeros(batch, heads, queries, v.shape[-1], dtype=dtype)
    for i in range(heads):
        j = i // (heads // kv_heads)
        scores = q[:, i] @ k[:, j].transpose(-1, -2) * scale  # (b, l, s)
        if causal:
            visible = torch.arange(keys)[None, :] <= torch.arange(queries)[:, None] + keys - queries
            scores = scores.masked_fill(~visible, float("-inf"))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        out[:, i] = (weights / weights.sum(-1, keepdim=True)) @ v[:, j]
    return out
