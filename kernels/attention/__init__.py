"""Multi-head scaled dot-product attention with grouped-query heads (the attention layers of
hybrid models). The public function checks its inputs, then runs the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_multiple, require_ndim, require_shape


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """softmax(q k^T · scale + mask) v for every head, with grouped-query attention.

    ::

        out[b, i] = softmax(q[b, i] k[b, j]^T · scale + M) v[b, j],   j = i // (h / h_kv)

    ``scale`` defaults to 1/sqrt(d). With ``causal``, M hides key c from query r unless
    c <= r + (s - l): the mask is aligned to the END of the keys, so l new queries after a cache
    of s - l keys (decoding) see the whole cache, and l = s is the usual triangle.

    Shapes: q (b, h, l, d); k (b, h_kv, s, d); v (b, h_kv, s, e), with h a multiple of h_kv.
    Returns (b, h, l, e) in q's dtype. Implementations: ``sdpa`` (torch's fused kernels) and
    ``reference`` (the math written out, softmax in float32).
    """
    op = "attention"
    require_ndim(op, "q", q, {4: "(b, h, l, d)"})
    require_ndim(op, "k", k, {4: "(b, h_kv, s, d)"})
    require_ndim(op, "v", v, {4: "(b, h_kv, s, e)"})
    batch, heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    require_shape(op, "k", k, (batch, kv_heads, keys, head_dim), "(b, h_kv, s, d)")
    require_shape(op, "v", v, (batch, kv_heads, keys, v.shape[-1]), "(b, h_kv, s, e)")
    require_multiple(op, "the number of query heads h", heads, "the number of kv heads", kv_heads)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            f"{op}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    if causal and queries > keys:
        raise ValueError(
            f"{op}: causal attention needs at least as many keys as queries (the mask is aligned "
            f"to the end), got l={queries} queries and s={keys} keys"
        )
    kernel = mambaverse.get_kernel(op, impl=impl, device=q.device, dtype=q.dtype)
    return kernel(q, k, v, causal=causal, scale=scale)
