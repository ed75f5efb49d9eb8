"""Attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash, memory-efficient,
cuDNN or math backend, as torch chooses), with the reference's end-aligned causal mask and GQA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import causal_mask

# enable_gqa= appeared in torch 2.5; before it, kv heads are repeated explicitly.
_NATIVE_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA implementation of :func:`mambaverse.kernels.attention` (see there)."""
    queries, keys = q.shape[2], k.shape[2]
    grouped = q.shape[1] != k.shape[1]
    options = {}
    if grouped and _NATIVE_GQA:
        options["enable_gqa"] = True
    elif grouped:
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    # SDPA's is_causal aligns the mask to the START (top-left); decoding needs it at the end.
    mask = causal_mask(queries, keys, q.device) if causal and queries != keys else None
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, **options
    )
