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
    # SDPA's is_causal aligns the mask to the START (top-left); decoding needs it at the end.
    mask = causal_mask(queries, keys, q.device) if causal and queries != keys else None
    return grouped_sdpa(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale)


def grouped_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` where k, v may have fewer heads than q (grouped-query
    attention, each kv head shared by num_heads / num_kv_heads query heads), on any torch:
    ``enable_gqa`` from torch 2.5, the kv heads repeated before it."""
    options = {}
    if q.shape[1] != k.shape[1]:
        if _NATIVE_GQA:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale, **options
    )
