"""Flash attention in Triton: forward and backward without materialising the L×L scores.

    O = softmax(scale · Q Kᵀ + mask) V        q (b, h, lq, d); k (b, h_kv, lk, d); v (b, h_kv, lk, e)

Query head i reads key/value head i // (h / h_kv) (grouped-query attention). With ``causal``
the mask is aligned to the end: query i sees keys j ≤ i + (lk − lq), so a query block appended
to a cache attends to all of it; a query that sees no key at all (lq > lk) returns zeros.

Forward (one program per block of BLOCK_M queries): walk the key blocks keeping the running row
maximum m, the running sum l of exp(s − m) and the unnormalised output; when m grows, rescale l
and the output by exp(m_old − m_new) (the online softmax). Scores are kept in base 2
(exp(x) = 2^(x·log2 e), folded into the scale), and the row's log-sum-exp is stored for the
backward. Key blocks wholly visible to every query of the block run without masks; only the
diagonal and the ragged ends are masked.

Backward, with P the recomputed probabilities and Δ_i = Σ_d O_id dO_id:

    dV = Pᵀ dO      dP = dO Vᵀ      dS = P ∘ (dP − Δ)      dQ = scale · dS K      dK = scale · dSᵀ Q

One kernel owns a block of keys (dK, dV; for grouped heads it loops over the query heads that
share it, so nothing is added atomically) and walks the queries that see it; another owns a
block of queries (dQ) and walks the keys it sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mambaverse.kernels.triton_support import (
    LOG2E,
    CachedLaunch,
    cdiv,
    check_device,
    check_float,
    check_interpretable_dot,
    check_offsets,
    check_rank,
    check_shape,
    dot_width,
    interpreting,
)

OP = "attention"


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    warps: int
    stages: int


# Chosen on an H100 with examples/benchmarks/tune_kernels.py (docs/kernels_notes.md), by the
# widest head dim: up to 64, up to 128, up to 256 (smaller tiles: shared memory is 227 KB).
FORWARD = {
    64: LaunchConfig(128, 64, 8, 3),
    128: LaunchConfig(128, 64, 8, 3),
    256: LaunchConfig(64, 32, 4, 2),
}
BACKWARD_KV = {
    64: LaunchConfig(64, 64, 4, 3),
    128: LaunchConfig(64, 128, 8, 3),
    256: LaunchConfig(32, 64, 4, 2),
}
BACKWARD_Q = {
    64: LaunchConfig(128, 64, 8, 3),
    128: LaunchConfig(128, 64, 8, 3),
    256: LaunchConfig(64, 32, 4, 2),
}
INTERPRETED = LaunchConfig(16, 16, 1, 1)
FLOAT32 = LaunchConfig(64, 32, 4, 2)  # fp32 tiles take twice the shared memory


def _pick(table: dict[int, LaunchConfig], head_dim: int, dtype: torch.dtype) -> LaunchConfig:
    if interpreting():
        return INTERPRETED
    if dtype == torch.float32:
        return FLOAT32
    return table[next(width for width in sorted(table) if head_dim <= width)]


@triton.jit
def _visible(offs_m, offs_n, lk, causal_offset, CAUSAL: tl.constexpr):
    """Which (query, key) pairs of a tile may attend: keys inside the sequence, causal order."""
    visible = offs_n[None, :] < lk
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
    return visible


@triton.jit
def _fwd_keys(acc, l_i, m_i, q, k_base, v_base, lo, hi, offs_m, offs_d, offs_e, lk, causal_offset,
              qk_scale, s_k_l, s_v_l, d_mask, e_mask, MASK: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Fold key blocks [lo, hi) into the running softmax of one query block."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_mask = d_mask
        v_mask = e_mask
        if MASK:
            k_mask = k_mask & (offs_n < lk)[:, None]
            v_mask = v_mask & (offs_n < lk)[:, None]
        kT = tl.load(
            k_base + offs_n[None, :] * s_k_l + offs_d[:, None], mask=tl.trans(k_mask), other=0.0
        )
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # (M, N), base 2
        if MASK:
            s = tl.where(_visible(offs_m, offs_n, lk, causal_offset, CAUSAL), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASK:  # a row with nothing visible yet keeps a finite reference point
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * s_v_l + offs_e[None, :], mask=v_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_ranges(m0, lk, causal_offset, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):  # fmt: skip
    """Key blocks of query rows [m0, m0 + BLOCK_M): [0, full) need no mask, [full, hi) do."""
    hi = lk
    full = lk
    if CAUSAL:
        hi = tl.minimum(lk, m0 + BLOCK_M + causal_offset)
        full = tl.minimum(lk, m0 + causal_offset + 1)
    full = tl.maximum(full, 0) // BLOCK_N * BLOCK_N
    return full, tl.maximum(hi, full)


@triton.jit
def _query_block(q_ptr, k_ptr, v_ptr, nheads, kv_group, lq, head_dim, v_dim,
                 s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_v_b, s_v_h,
                 BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, E_PAD: tl.constexpr):  # fmt: skip
    """A program's query block: its rows, the head and its kv head, q, and the k / v bases."""
    m0 = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    kv_head = head // kv_group
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    d_mask = (offs_d < head_dim)[None, :]
    e_mask = (offs_e < v_dim)[None, :]
    q = tl.load(q_ptr + b * s_q_b + head * s_q_h + offs_m[:, None] * s_q_l + offs_d[None, :],
                mask=(offs_m < lq)[:, None] & d_mask, other=0.0)  # fmt: skip
    k_base = k_ptr + b * s_k_b + kv_head * s_k_h
    v_base = v_ptr + b * s_v_b + kv_head * s_v_h
    return m0, pid_bh, b, head, offs_m, offs_d, offs_e, d_mask, e_mask, q, k_base, v_base


@CachedLaunch
@triton.jit
def _attn_fwd(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    nheads, kv_group, lq, lk, head_dim, v_dim, causal_offset, qk_scale,
    s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_k_l, s_v_b, s_v_h, s_v_l,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr,
    E_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    m0, pid_bh, _, _, offs_m, offs_d, offs_e, d_mask, e_mask, q, k_base, v_base = _query_block(
        q_ptr, k_ptr, v_ptr, nheads, kv_group, lq, head_dim, v_dim,
        s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_v_b, s_v_h, BLOCK_M, D_PAD, E_PAD,
    )  # fmt: skip

    acc = tl.zeros((BLOCK_M, E_PAD), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    full, hi = _key_ranges(m0, lk, causal_offset, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_base, v_base, 0, full, offs_m, offs_d, offs_e,
                              lk, causal_offset, qk_scale, s_k_l, s_v_l, d_mask, e_mask, False,
                              CAUSAL, BLOCK_N, DOT_PRECISION)  # fmt: skip
    acc, l_i, m_i = _fwd_keys(acc, l_i, m_i, q, k_base, v_base, full, hi, offs_m, offs_d, offs_e,
                              lk, causal_offset, qk_scale, s_k_l, s_v_l, d_mask, e_mask, True,
                              CAUSAL, BLOCK_N, DOT_PRECISION)  # fmt: skip

    seen = l_i > 0.0  # false only for a query that sees no key
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    out_off = (pid_bh.to(tl.int64) * lq + offs_m[:, None]) * v_dim + offs_e[None, :]
    tl.store(o_ptr + out_off, o.to(o_ptr.dtype.element_ty), mask=(offs_m < lq)[:, None] & e_mask)
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(lse_ptr + pid_bh.to(tl.int64) * lq + offs_m, lse, mask=offs_m < lq)


@CachedLaunch
@triton.jit
def _bwd_delta(o_ptr, do_ptr, delta_ptr, lq, v_dim, s_do_b, s_do_h, s_do_l, nheads,
               BLOCK_M: tl.constexpr, E_PAD: tl.constexpr):  # fmt: skip
    """Δ_i = Σ_e O_ie dO_ie, the row term of the softmax gradient."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, E_PAD)
    mask = (offs_m < lq)[:, None] & (offs_e < v_dim)[None, :]
    o = tl.load(o_ptr + (pid_bh.to(tl.int64) * lq + offs_m[:, None]) * v_dim + offs_e[None, :],
                mask=mask, other=0.0)  # fmt: skip
    do = tl.load(do_ptr + b * s_do_b + head * s_do_h + offs_m[:, None] * s_do_l + offs_e[None, :],
                 mask=mask, other=0.0)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * lq + offs_m, delta, mask=offs_m < lq)


@triton.jit
def _bwd_kv_queries(dk, dv, k, v, q_base, do_base, lse_base, delta_base, lo, hi, offs_n, offs_d,
                    offs_e, lq, lk, causal_offset, qk_scale, s_q_l, s_do_l, d_mask, e_mask,
                    MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Add the query blocks [lo, hi) of one head to dK, dV of one key block (all transposed)."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_mask = d_mask
        do_mask = e_mask
        if MASK:
            q_mask = q_mask & (offs_m < lq)[:, None]
            do_mask = do_mask & (offs_m < lq)[:, None]
        q = tl.load(q_base + offs_m[:, None] * s_q_l + offs_d[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_base + offs_m, mask=offs_m < lq, other=float("inf"))
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (N, M)
        pT = tl.exp2(sT - lse[None, :])
        if MASK:
            pT = tl.where(tl.trans(_visible(offs_m, offs_n, lk, causal_offset, CAUSAL)), pT, 0.0)
        do = tl.load(do_base + offs_m[:, None] * s_do_l + offs_e[None, :], mask=do_mask, other=0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        delta = tl.load(delta_base + offs_m, mask=offs_m < lq, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@CachedLaunch
@triton.jit
def _attn_bwd_kv(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    nheads, kv_heads, kv_group, lq, lk, head_dim, v_dim, causal_offset, qk_scale, scale,
    s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_k_l, s_v_b, s_v_h, s_v_l, s_do_b, s_do_h, s_do_l,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr,
    E_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    n0 = tl.program_id(0) * BLOCK_N
    pid_bkv = tl.program_id(1)
    b = (pid_bkv // kv_heads).to(tl.int64)
    kv_head = pid_bkv % kv_heads
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_e = tl.arange(0, E_PAD)
    d_mask = (offs_d < head_dim)[None, :]
    e_mask = (offs_e < v_dim)[None, :]
    n_mask = (offs_n < lk)[:, None]
    k = tl.load(k_ptr + b * s_k_b + kv_head * s_k_h + offs_n[:, None] * s_k_l + offs_d[None, :],
                mask=n_mask & d_mask, other=0.0)  # fmt: skip
    v = tl.load(v_ptr + b * s_v_b + kv_head * s_v_h + offs_n[:, None] * s_v_l + offs_e[None, :],
                mask=n_mask & e_mask, other=0.0)  # fmt: skip

    # Query blocks that see this key block: [lo, mid) cross the diagonal (masked), [mid, end)
    # see all of it (unmasked unless the key block is ragged), [tail, lq) are the ragged end.
    lq_floor = lq // BLOCK_M * BLOCK_M
    lo = 0
    mid = 0
    if CAUSAL:
        lo = tl.maximum(n0 - causal_offset, 0) // BLOCK_M * BLOCK_M
        mid = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - causal_offset, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(tl.maximum(mid, lo), lq_floor)
    end = tl.where(n0 + BLOCK_N > lk, mid, lq_floor)
    end = tl.maximum(end, mid)
    tail = tl.maximum(end, lo)

    dk = tl.zeros((BLOCK_N, D_PAD), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, E_PAD), dtype=tl.float32)
    for i in range(kv_group):
        head = kv_head * kv_group + i
        pid_bh = b * nheads + head
        q_base = q_ptr + b * s_q_b + head * s_q_h
        do_base = do_ptr + b * s_do_b + head * s_do_h
        lse_base = lse_ptr + pid_bh * lq
        delta_base = delta_ptr + pid_bh * lq
        dk, dv = _bwd_kv_queries(dk, dv, k, v, q_base, do_base, lse_base, delta_base, lo, mid,
                                 offs_n, offs_d, offs_e, lq, lk, causal_offset, qk_scale, s_q_l,
                                 s_do_l, d_mask, e_mask, True, CAUSAL, BLOCK_M, DOT_PRECISION)  # fmt: skip
        dk, dv = _bwd_kv_queries(dk, dv, k, v, q_base, do_base, lse_base, delta_base, mid, end,
                                 offs_n, offs_d, offs_e, lq, lk, causal_offset, qk_scale, s_q_l,
                                 s_do_l, d_mask, e_mask, False, CAUSAL, BLOCK_M, DOT_PRECISION)  # fmt: skip
        dk, dv = _bwd_kv_queries(dk, dv, k, v, q_base, do_base, lse_base, delta_base, tail, lq,
                                 offs_n, offs_d, offs_e, lq, lk, causal_offset, qk_scale, s_q_l,
                                 s_do_l, d_mask, e_mask, True, CAUSAL, BLOCK_M, DOT_PRECISION)  # fmt: skip

    rows = pid_bkv.to(tl.int64) * lk + offs_n[:, None]
    tl.store(dk_ptr + rows * head_dim + offs_d[None, :], (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=n_mask & d_mask)  # fmt: skip
    tl.store(dv_ptr + rows * v_dim + offs_e[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=n_mask & e_mask)  # fmt: skip


@triton.jit
def _bwd_q_keys(dq, q, do, lse, delta, k_base, v_base, lo, hi, offs_m, offs_d, offs_e, lk,
                causal_offset, qk_scale, s_k_l, s_v_l, d_mask, e_mask, MASK: tl.constexpr,
                CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):  # fmt: skip
    """Add the key blocks [lo, hi) to dQ of one query block."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_mask = d_mask
        v_mask = e_mask
        if MASK:
            k_mask = k_mask & (offs_n < lk)[:, None]
            v_mask = v_mask & (offs_n < lk)[:, None]
        kT = tl.load(
            k_base + offs_n[None, :] * s_k_l + offs_d[:, None], mask=tl.trans(k_mask), other=0.0
        )
        vT = tl.load(
            v_base + offs_n[None, :] * s_v_l + offs_e[:, None], mask=tl.trans(v_mask), other=0.0
        )
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if MASK:
            p = tl.where(_visible(offs_m, offs_n, lk, causal_offset, CAUSAL), p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=DOT_PRECISION)
    return dq


@CachedLaunch
@triton.jit
def _attn_bwd_q(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    nheads, kv_group, lq, lk, head_dim, v_dim, causal_offset, qk_scale, scale,
    s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_k_l, s_v_b, s_v_h, s_v_l, s_do_b, s_do_h, s_do_l,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D_PAD: tl.constexpr,
    E_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    m0, pid_bh, b, head, offs_m, offs_d, offs_e, d_mask, e_mask, q, k_base, v_base = _query_block(
        q_ptr, k_ptr, v_ptr, nheads, kv_group, lq, head_dim, v_dim,
        s_q_b, s_q_h, s_q_l, s_k_b, s_k_h, s_v_b, s_v_h, BLOCK_M, D_PAD, E_PAD,
    )  # fmt: skip
    m_mask = (offs_m < lq)[:, None]
    do = tl.load(do_ptr + b * s_do_b + head * s_do_h + offs_m[:, None] * s_do_l + offs_e[None, :],
                 mask=m_mask & e_mask, other=0.0)  # fmt: skip
    lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * lq + offs_m, mask=offs_m < lq, other=float("inf"))
    delta = tl.load(delta_ptr + pid_bh.to(tl.int64) * lq + offs_m, mask=offs_m < lq, other=0.0)

    dq = tl.zeros((BLOCK_M, D_PAD), dtype=tl.float32)
    full, hi = _key_ranges(m0, lk, causal_offset, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_q_keys(dq, q, do, lse, delta, k_base, v_base, 0, full, offs_m, offs_d, offs_e, lk,
                     causal_offset, qk_scale, s_k_l, s_v_l, d_mask, e_mask, False, CAUSAL,
                     BLOCK_N, DOT_PRECISION)  # fmt: skip
    dq = _bwd_q_keys(dq, q, do, lse, delta, k_base, v_base, full, hi, offs_m, offs_d, offs_e, lk,
                     causal_offset, qk_scale, s_k_l, s_v_l, d_mask, e_mask, True, CAUSAL,
                     BLOCK_N, DOT_PRECISION)  # fmt: skip
    out_off = (pid_bh.to(tl.int64) * lq + offs_m[:, None]) * head_dim + offs_d[None, :]
    tl.store(dq_ptr + out_off, (dq * scale).to(dq_ptr.dtype.element_ty), mask=m_mask & d_mask)


# -- launch helpers -----------------------------------------------------------------------------
def _precision(t: torch.Tensor) -> str:
    """fp32 inputs get exact fp32 products (no tf32), so fp32 results keep fp32 accuracy."""
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _head_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _forward(q, k, v, causal: bool, scale: float):
    batch, nheads, lq, head_dim = q.shape
    kv_heads, lk, v_dim = k.shape[1], k.shape[2], v.shape[3]
    cfg = _pick(FORWARD, max(head_dim, v_dim), q.dtype)
    o = torch.empty((batch, nheads, lq, v_dim), device=q.device, dtype=q.dtype)
    lse = torch.empty((batch, nheads, lq), device=q.device, dtype=torch.float32)
    grid = (cdiv(lq, cfg.block_m), batch * nheads)
    _attn_fwd[grid](
        q, k, v, o, lse, nheads, nheads // kv_heads, lq, lk, head_dim, v_dim, lk - lq,
        scale * LOG2E.value, *_head_strides(q), *_head_strides(k), *_head_strides(v),
        CAUSAL=causal, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D_PAD=dot_width(head_dim),
        E_PAD=dot_width(v_dim), DOT_PRECISION=_precision(q), num_warps=cfg.warps,
        num_stages=cfg.stages,
    )  # fmt: skip
    return o, lse


def _backward(do, q, k, v, o, lse, causal: bool, scale: float):
    batch, nheads, lq, head_dim = q.shape
    kv_heads, lk, v_dim = k.shape[1], k.shape[2], v.shape[3]
    pads = {"D_PAD": dot_width(head_dim), "E_PAD": dot_width(v_dim)}
    precision = _precision(q)
    widest = max(head_dim, v_dim)
    delta = torch.empty_like(lse)
    block = 16 if interpreting() else 64
    _bwd_delta[(cdiv(lq, block), batch * nheads)](
        o, do, delta, lq, v_dim, *_head_strides(do), nheads, BLOCK_M=block, E_PAD=pads["E_PAD"]
    )
    dk = torch.empty((batch, kv_heads, lk, head_dim), device=q.device, dtype=k.dtype)
    dv = torch.empty((batch, kv_heads, lk, v_dim), device=q.device, dtype=v.dtype)
    cfg = _pick(BACKWARD_KV, widest, q.dtype)
    _attn_bwd_kv[(cdiv(lk, cfg.block_n), batch * kv_heads)](
        q, k, v, do, lse, delta, dk, dv,
        nheads, kv_heads, nheads // kv_heads, lq, lk, head_dim, v_dim, lk - lq, scale * LOG2E.value,
        scale, *_head_strides(q), *_head_strides(k), *_head_strides(v), *_head_strides(do),
        CAUSAL=causal, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **pads,
        DOT_PRECISION=precision, num_warps=cfg.warps, num_stages=cfg.stages,
    )  # fmt: skip
    dq = torch.empty((batch, nheads, lq, head_dim), device=q.device, dtype=q.dtype)
    cfg = _pick(BACKWARD_Q, widest, q.dtype)
    _attn_bwd_q[(cdiv(lq, cfg.block_m), batch * nheads)](
        q, k, v, do, lse, delta, dq,
        nheads, nheads // kv_heads, lq, lk, head_dim, v_dim, lk - lq, scale * LOG2E.value, scale,
        *_head_strides(q), *_head_strides(k), *_head_strides(v), *_head_strides(do),
        CAUSAL=causal, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **pads,
        DOT_PRECISION=precision, num_warps=cfg.warps, num_stages=cfg.stages,
    )  # fmt: skip
    return dq, dk, dv


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels read each row of head_dim values as one contiguous vector.
    return t if t.stride(-1) == 1 else t.contiguous()


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        o, lse = _forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(_unit_last_stride(do), q, k, v, o, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Triton flash attention; see the module docstring. v may have its own head dim e.

    Returns o (b, h, lq, e).
    """
    tensors = {"q": q, "k": k, "v": v}
    check_device(OP, tensors)
    check_float(OP, tensors)
    check_interpretable_dot(OP, tensors)
    check_offsets(OP, tensors, "Use impl='sdpa' (torch's attention) for sequences this long.")
    check_rank(OP, "q", q, (4,), "(batch, heads, length, head_dim)")
    check_rank(OP, "k", k, (4,), "(batch, kv_heads, length, head_dim)")
    batch, nheads, _, head_dim = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    check_shape(OP, "k", k, (batch, kv_heads, lk, head_dim))
    check_rank(OP, "v", v, (4,), "(batch, kv_heads, length, v_dim)")
    check_shape(OP, "v", v, (batch, kv_heads, lk, v.shape[3]))
    if kv_heads == 0 or nheads % kv_heads:
        raise ValueError(
            f"{OP} (triton): q has {nheads} heads, not a multiple of k's {kv_heads} heads"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{OP} (triton): q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}")
    if max(head_dim, v.shape[3]) > 256:
        raise ValueError(
            f"{OP} (triton): head dims are {head_dim} (q, k) and {v.shape[3]} (v); expected at most 256"
        )
    scale = head_dim**-0.5 if scale is None else float(scale)
    return _AttentionFn.apply(q, k, v, bool(causal), scale)
