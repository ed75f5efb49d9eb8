"""Scaled dot-product attention written out: scores, mask, softmax in float32, weighted sum.

Math, per batch b and query head i (reading key/value head j = i // (h / h_kv)):

    out = softmax(q k^T · scale + mask) v,   scale = 1/sqrt(d) unless given

With ``causal``, query r (of l) sees keys c <= r + (s - l): the mask is aligned to the END of
the keys, so l new queries after s - l cached keys (decoding) see the whole cache.
"""

from __future__ import annotations

import torch

from .._inputs import compute_dtype


def causal_mask(queries: int, keys: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(l, s) bool, True where query r may see key c: c <= r + (s - l) (aligned to the end)."""
    query = torch.arange(queries, device=device)[:, None]
    key = torch.arange(keys, device=device)[None, :]
    return key <= query + (keys - queries)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.attention` (see there)."""
    dtype, out_dtype = compute_dtype(q, k, v), q.dtype
    batch, heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    # Query heads grouped by the kv head they read: (b, h_kv, h/h_kv, l, d). Broadcasting k and v
    # over the group is repeating each kv head h/h_kv times, without the copy.
    q = q.to(dtype).reshape(batch, kv_heads, heads // kv_heads, queries, head_dim)
    k, v = k.to(dtype)[:, :, None], v.to(dtype)[:, :, None]  # (b, h_kv, 1, s, ·)

    scores = (q @ k.transpose(-1, -2)) * scale  # (b, h_kv, h/h_kv, l, s)
    if causal:
        scores = scores.masked_fill(~causal_mask(queries, keys, q.device), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.reshape(batch, heads, queries, v.shape[-1]).to(out_dtype)
