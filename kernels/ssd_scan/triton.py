"""SSD chunked scan (Mamba-2) in Triton: forward, backward and the one-step decoding update.

Per head h (group g = h // (heads / groups)), with δ_t = softplus(dt_t + bias) (or dt_t + bias),
a_t = δ_t A_h and the in-chunk cumulative sum cs_t = Σ_{r ≤ t} a_r:

    S_t = exp(a_t) S_{t-1} + δ_t x_t ⊗ B_t        (state (p, n))
    y_t = S_t C_t + D x_t                          out_t = y_t · silu(z_t)

Cut into chunks of T steps, with S_prev the state entering the chunk and L[t, s] = exp(cs_t − cs_s)
for s ≤ t (0 above the diagonal):

    y_t = exp(cs_t) S_prev C_t + Σ_{s ≤ t} (C_t · B_s) L[t, s] δ_s x_s + D x_t       (intra-chunk: tl.dot)
    S_next = exp(cs_last) S_prev + Σ_s exp(cs_last − cs_s) δ_s x_s ⊗ B_s               (inter-chunk)

Requires δ_t A_h ≤ 0 (a decaying state, as softplus steps and A < 0 give): the in-chunk exponents
cs_t − cs_s are clamped at 0, which only masked entries reach then.

Shapes: x, z, out (b, l, h, p); dt (b, l, h); A, bias (h,); B, C (b, l, g, n); D (h,) or (h, p);
initial / final states (b, h, p, n) fp32. Any length: the last chunk is masked.

Forward, two kernels: `_states_fwd` walks the chunks of one (batch, head, tile of the state)
in order, computing each chunk's contribution with one matmul and carrying the state (it also
writes the chunk's cs and δ); `_chunk_scan_fwd` computes every output block in parallel.

Backward, with dy = ∂L/∂y (dout · silu(z)) and G = ∂L/∂S_next of a chunk:

    ∂L/∂S_prev (chunk-local) = Σ_t exp(cs_t) dy_t ⊗ C_t                    `_dstate_local`
    G walks the chunks in reverse: G_prev = exp(cs_last) G + local           `_state_passing_bwd`
    ∂L/∂x_s = δ_s (Σ_{t ≥ s} (C_t · B_s) L[t, s] dy_t + exp(cs_last − cs_s) G B_s) + D dy_s    `_dx`
    ∂L/∂B_s = Σ_h Σ_{t ≥ s} L[t, s] (dy_t · x_s) δ_s C_t + δ_s exp(cs_last − cs_s) x_s G      `_dB`
    ∂L/∂C_t = Σ_h exp(cs_t) dy_t S_prev + Σ_{s ≤ t} L[t, s] (dy_t · x_s) δ_s B_s              `_dC`

The step sizes enter through a_r = δ_r A_h, and ∂L/∂a_r collects every exponent that spans step
r: Q_r = Σ_{t ≥ r} Σ_{s < r} W[t, s] (W the in-chunk terms, summed directly in `_dC`, never as a
difference of two large row and column sums, which cancels badly in bf16), Σ_{t ≥ r} U_t (the
carried state's terms), Σ_{s < r} V_s (the chunk state's terms) and ∂L/∂cs_last (`_ddt`).
∂L/∂B and ∂L/∂C sum over the heads of a group: each program loops over a share of those heads.
Every atomic add is relaxed: its sums are read only by later kernels, and Triton's default
(acq_rel) wraps each one in a GPU-wide fence and an L1 invalidation (SASS: MEMBAR.ALL.GPU,
CCTL.IVALL), which made `_dC` 1.17x slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mambaverse.kernels.shared_grad import grad_slot, place_grad
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
    check_step_inputs,
    dot_width,
    interpreting,
    multiprocessors,
    next_pow2,
    silu_and_grad,
    softplus,
)

OP = "ssd_scan"


@dataclass(frozen=True)
class LaunchConfig:
    block: int  # rows (time steps) per matmul tile inside a chunk
    warps: int
    stages: int
    head_splits: int  # programs sharing the heads of one group in the dB / dC kernels
    # The kernels that walk every chunk in order (_states_fwd, _state_passing_bwd) run one program
    # per (batch, head, piece of the state): the pieces shrink until there are this many
    # programs per multiprocessor (see state_tile, passing_block). One per SM measured best on
    # an H100 (run S19: 2 and 4 made the tiles too small to pay for the work each repeats)
    state_programs_per_sm: int = 1


GPU = LaunchConfig(block=64, warps=4, stages=1, head_splits=4)
INTERPRETED = LaunchConfig(block=16, warps=1, stages=1, head_splits=2, state_programs_per_sm=16)


def _config() -> LaunchConfig:
    return INTERPRETED if interpreting() else GPU


@triton.jit
def _exp(x):
    return tl.exp2(x * LOG2E)


@triton.jit
def _chunk_rows(cs_ptr, dtb_ptr, row0, offs, chunk_len):
    """cs and δ of rows ``offs`` of a chunk (buffers (chunk_size,), fp32); 0 past the end."""
    mask = offs < chunk_len
    cs = tl.load(cs_ptr + row0 + offs, mask=mask, other=0.0)
    dtb = tl.load(dtb_ptr + row0 + offs, mask=mask, other=0.0)
    return cs, dtb, mask


# -- forward --------------------------------------------------------------------------------------
@CachedLaunch
@triton.jit
def _states_fwd(
    x_ptr, dt_ptr, A_ptr, bias_ptr, B_ptr, init_ptr,
    cs_ptr, dtb_ptr, sprev_ptr, final_ptr,
    seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_dt_b, s_dt_l, s_dt_h, s_B_b, s_B_l, s_B_g, s_B_n,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_INIT: tl.constexpr,
    STORE_FINAL: tl.constexpr, T_PAD: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Chunk by chunk: write S_prev (state entering each chunk), cs and δ; carry S in fp32."""
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_n = tl.program_id(2)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    offs_t = tl.arange(0, T_PAD)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_pn = (offs_p[:, None] < headdim) & (offs_n[None, :] < dstate)
    first_tile = (pid_p == 0) & (pid_n == 0)  # writes cs and δ, shared by every tile

    A = tl.load(A_ptr + head).to(tl.float32)
    bias = tl.load(bias_ptr + head).to(tl.float32) if HAS_BIAS else 0.0
    state_off = (pid_bh.to(tl.int64) * headdim + offs_p[:, None]) * dstate + offs_n[None, :]
    if HAS_INIT:
        S = tl.load(init_ptr + state_off, mask=mask_pn, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    # per-(b, h) rows of the (b, h, chunks, chunk_size) buffers
    row_base = pid_bh.to(tl.int64) * n_chunks * chunk_size

    for c in range(n_chunks):
        t = c * chunk_size + offs_t
        valid = (offs_t < chunk_size) & (t < seqlen)
        dt = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + head * s_dt_h, mask=valid, other=0.0)
        dt = dt.to(tl.float32) + bias
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(valid, dt, 0.0)
        cs = tl.cumsum(dt * A, 0)
        cs_last = tl.sum(dt * A, 0)
        row0 = row_base + c * chunk_size
        tl.store(cs_ptr + row0 + offs_t, cs, mask=(offs_t < chunk_size) & first_tile)
        tl.store(dtb_ptr + row0 + offs_t, dt, mask=(offs_t < chunk_size) & first_tile)

        sprev_off = ((b * n_chunks + c) * nheads + head) * headdim * dstate
        tl.store(sprev_ptr + sprev_off + (offs_p[:, None] * dstate + offs_n[None, :]),
                 S.to(sprev_ptr.dtype.element_ty), mask=mask_pn)  # fmt: skip
        w = dt * _exp(cs_last - cs)  # δ_s exp(cs_last − cs_s)
        xT = tl.load(
            x_ptr + b * s_x_b + t[None, :] * s_x_l + head * s_x_h + offs_p[:, None] * s_x_p,
            mask=valid[None, :] & (offs_p[:, None] < headdim),
            other=0.0,
        )  # (P, T)
        Bw = tl.load(
            B_ptr + b * s_B_b + t[:, None] * s_B_l + group * s_B_g + offs_n[None, :] * s_B_n,
            mask=valid[:, None] & (offs_n[None, :] < dstate),
            other=0.0,
        )  # (T, N)
        Bw = (Bw.to(tl.float32) * w[:, None]).to(xT.dtype)
        S = S * _exp(cs_last) + tl.dot(xT, Bw, input_precision=DOT_PRECISION)

    if STORE_FINAL:
        tl.store(final_ptr + state_off, S, mask=mask_pn)


@CachedLaunch
@triton.jit
def _chunk_scan_fwd(
    x_ptr, B_ptr, C_ptr, D_ptr, z_ptr, cs_ptr, dtb_ptr, sprev_ptr, y_ptr, ypre_ptr,
    seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, STORE_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, N_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One block of BLOCK_M outputs: the carried state's part, then the causal in-chunk part."""
    m_blocks = tl.cdiv(chunk_size, BLOCK_M)
    c = tl.program_id(0) // m_blocks
    m0 = (tl.program_id(0) % m_blocks) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    chunk_len = tl.minimum(chunk_size, seqlen - c * chunk_size)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, N_PAD)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    row0 = (pid_bh.to(tl.int64) * n_chunks + c) * chunk_size
    cs_m, _, mask_m = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_m, chunk_len)
    t_m = c * chunk_size + offs_m
    x_base = x_ptr + b * s_x_b + head * s_x_h
    B_base = B_ptr + b * s_B_b + group * s_B_g
    Cm = tl.load(
        C_ptr + b * s_C_b + t_m[:, None] * s_C_l + group * s_C_g + offs_n[None, :] * s_C_n,
        mask=mask_m[:, None] & mask_n[None, :],
        other=0.0,
    )  # (M, N)

    sprev_off = ((b * n_chunks + c) * nheads + head) * headdim * dstate
    SpT = tl.load(sprev_ptr + sprev_off + offs_p[None, :] * dstate + offs_n[:, None],
                  mask=mask_n[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
    acc = tl.dot(Cm, SpT.to(Cm.dtype), input_precision=DOT_PRECISION)  # (M, P)
    acc = acc * _exp(cs_m)[:, None]

    for k0 in range(0, tl.minimum(m0 + BLOCK_M, chunk_len), BLOCK_M):
        offs_k = k0 + tl.arange(0, BLOCK_M)
        cs_k, dt_k, mask_k = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_k, chunk_len)
        t_k = c * chunk_size + offs_k
        BkT = tl.load(B_base + t_k[None, :] * s_B_l + offs_n[:, None] * s_B_n,
                      mask=mask_n[:, None] & mask_k[None, :], other=0.0)  # fmt: skip
        cb = tl.dot(Cm, BkT, input_precision=DOT_PRECISION)  # (M, K): C_t · B_s
        causal = (offs_m[:, None] >= offs_k[None, :]) & mask_k[None, :]
        decay = _exp(tl.minimum(cs_m[:, None] - cs_k[None, :], 0.0))
        weight = tl.where(causal, cb * decay * dt_k[None, :], 0.0)
        xk = tl.load(x_base + t_k[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                     mask=mask_k[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
        acc += tl.dot(weight.to(xk.dtype), xk, input_precision=DOT_PRECISION)

    mask_mp = mask_m[:, None] & mask_p[None, :]
    if HAS_D:
        xm = tl.load(
            x_base + t_m[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask_mp, other=0.0
        )
        if D_PER_P:
            Dv = tl.load(D_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
            acc += Dv[None, :] * xm.to(tl.float32)
        else:
            acc += tl.load(D_ptr + head).to(tl.float32) * xm.to(tl.float32)
    out_off = ((b * seqlen + t_m[:, None]) * nheads + head) * headdim + offs_p[None, :]
    if HAS_Z:
        if STORE_PRE:
            tl.store(ypre_ptr + out_off, acc.to(ypre_ptr.dtype.element_ty), mask=mask_mp)
        z = tl.load(z_ptr + b * s_z_b + t_m[:, None] * s_z_l + head * s_z_h + offs_p[None, :] * s_z_p,
                    mask=mask_mp, other=0.0)  # fmt: skip
        silu, _ = silu_and_grad(z.to(tl.float32))
        acc = acc * silu
    tl.store(y_ptr + out_off, acc.to(y_ptr.dtype.element_ty), mask=mask_mp)


# -- backward -------------------------------------------------------------------------------------
@CachedLaunch
@triton.jit
def _dstate_local(
    dout_ptr, z_ptr, ypre_ptr, C_ptr, cs_ptr, dy_ptr, dz_ptr, dlocal_ptr,
    seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
    s_o_b, s_o_l, s_o_h, s_o_p, s_z_b, s_z_l, s_z_h, s_z_p, s_C_b, s_C_l, s_C_g, s_C_n,
    HAS_Z: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, N_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dy = dout·silu(z) and dz (when gated), and Σ_t exp(cs_t) dy_t ⊗ C_t of one chunk."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    chunk_len = tl.minimum(chunk_size, seqlen - c * chunk_size)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, N_PAD)
    mask_p = offs_p < headdim
    row0 = (pid_bh.to(tl.int64) * n_chunks + c) * chunk_size
    acc = tl.zeros((BLOCK_P, N_PAD), dtype=tl.float32)
    for t0 in range(0, chunk_len, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < chunk_len
        t = c * chunk_size + offs_t
        cs = tl.load(cs_ptr + row0 + offs_t, mask=mask_t, other=0.0)
        mask_tp = mask_t[:, None] & mask_p[None, :]
        dy = tl.load(dout_ptr + b * s_o_b + t[:, None] * s_o_l + head * s_o_h + offs_p[None, :] * s_o_p,
                     mask=mask_tp, other=0.0)  # fmt: skip
        if HAS_Z:
            z = tl.load(z_ptr + b * s_z_b + t[:, None] * s_z_l + head * s_z_h + offs_p[None, :] * s_z_p,
                        mask=mask_tp, other=0.0).to(tl.float32)  # fmt: skip
            out_off = ((b * seqlen + t[:, None]) * nheads + head) * headdim + offs_p[None, :]
            ypre = tl.load(ypre_ptr + out_off, mask=mask_tp, other=0.0).to(tl.float32)
            silu, dsilu = silu_and_grad(z)
            dz = dy.to(tl.float32) * ypre * dsilu
            tl.store(dz_ptr + out_off, dz.to(dz_ptr.dtype.element_ty), mask=mask_tp)
            dy = (dy.to(tl.float32) * silu).to(dy_ptr.dtype.element_ty)
            tl.store(dy_ptr + out_off, dy, mask=mask_tp)
        Ct = tl.load(C_ptr + b * s_C_b + t[:, None] * s_C_l + group * s_C_g + offs_n[None, :] * s_C_n,
                     mask=mask_t[:, None] & (offs_n[None, :] < dstate), other=0.0)  # fmt: skip
        Cw = (Ct.to(tl.float32) * _exp(cs)[:, None]).to(dy.dtype)
        acc += tl.dot(tl.trans(dy), Cw, input_precision=DOT_PRECISION)
    off = (((b * n_chunks + c) * nheads + head) * headdim + offs_p[:, None]) * dstate + offs_n[
        None, :
    ]
    tl.store(dlocal_ptr + off, acc, mask=mask_p[:, None] & (offs_n[None, :] < dstate))


@CachedLaunch
@triton.jit
def _state_passing_bwd(
    dlocal_ptr, sprev_ptr, cs_ptr, dfinal_ptr, g_ptr, dlast_ptr, dinit_ptr,
    nheads, state_size, chunk_size, n_chunks,
    HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Reverse over chunks: G = ∂L/∂S_next per chunk, and ∂L/∂cs_last from the carried state."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < state_size
    if HAS_DFINAL:
        G = tl.load(dfinal_ptr + pid_bh.to(tl.int64) * state_size + offs, mask=mask, other=0.0)
        G = G.to(tl.float32)
    else:
        G = tl.zeros((BLOCK,), dtype=tl.float32)
    for step in range(n_chunks):
        c = n_chunks - 1 - step
        off = ((b * n_chunks + c) * nheads + head) * state_size + offs
        local = tl.load(dlocal_ptr + off, mask=mask, other=0.0)
        tl.store(g_ptr + off, G.to(g_ptr.dtype.element_ty), mask=mask)
        sprev = tl.load(sprev_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cs_last = tl.load(
            cs_ptr + (pid_bh.to(tl.int64) * n_chunks + c) * chunk_size + chunk_size - 1
        )
        decay = _exp(cs_last)
        tl.atomic_add(
            dlast_ptr + pid_bh.to(tl.int64) * n_chunks + c,
            tl.sum(G * sprev, 0) * decay,
            sem="relaxed",
        )
        G = decay * G + local
    if HAS_INIT:
        tl.store(dinit_ptr + pid_bh.to(tl.int64) * state_size + offs, G, mask=mask)


@CachedLaunch
@triton.jit
def _dx(
    x_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, cs_ptr, dtb_ptr, g_ptr,
    dx_ptr, ddt_ptr, v_ptr, dD_ptr,
    seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p, s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n,
    s_y_b, s_y_l, s_y_h, s_y_p, s_dx_b, s_dx_l, s_dx_h, s_dx_p,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr,
    BLOCK_S: tl.constexpr, P_PAD: tl.constexpr, N_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """∂L/∂x of BLOCK_S rows (in dx's layout: its slot of a shared-gradient split, or dense), the
    direct part of ∂L/∂δ, and V_s (the chunk-state term of ∂L/∂a)."""
    s_blocks = tl.cdiv(chunk_size, BLOCK_S)
    c = tl.program_id(0) // s_blocks
    s0 = (tl.program_id(0) % s_blocks) * BLOCK_S
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    chunk_len = tl.minimum(chunk_size, seqlen - c * chunk_size)
    offs_s = s0 + tl.arange(0, BLOCK_S)
    offs_p = tl.arange(0, P_PAD)
    offs_n = tl.arange(0, N_PAD)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    row0 = (pid_bh.to(tl.int64) * n_chunks + c) * chunk_size
    cs_s, dt_s, mask_s = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_s, chunk_len)
    cs_last = tl.load(cs_ptr + row0 + chunk_size - 1)
    t_s = c * chunk_size + offs_s
    B_base = B_ptr + b * s_B_b + group * s_B_g
    C_base = C_ptr + b * s_C_b + group * s_C_g
    dy_base = dy_ptr + b * s_y_b + head * s_y_h
    Bs = tl.load(B_base + t_s[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                 mask=mask_s[:, None] & mask_n[None, :], other=0.0)  # fmt: skip

    g_off = ((b * n_chunks + c) * nheads + head) * headdim * dstate
    GT = tl.load(g_ptr + g_off + offs_p[None, :] * dstate + offs_n[:, None],
                 mask=mask_n[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
    from_state = tl.dot(Bs, GT.to(Bs.dtype), input_precision=DOT_PRECISION)
    from_state = from_state * _exp(cs_last - cs_s)[:, None]  # (S, P)

    acc = tl.zeros((BLOCK_S, P_PAD), dtype=tl.float32)
    for t0 in range(s0, chunk_len, BLOCK_S):
        offs_t = t0 + tl.arange(0, BLOCK_S)
        mask_t = offs_t < chunk_len
        cs_t = tl.load(cs_ptr + row0 + offs_t, mask=mask_t, other=0.0)
        t = c * chunk_size + offs_t
        CtT = tl.load(C_base + t[None, :] * s_C_l + offs_n[:, None] * s_C_n,
                      mask=mask_n[:, None] & mask_t[None, :], other=0.0)  # fmt: skip
        cbT = tl.dot(Bs, CtT, input_precision=DOT_PRECISION)  # (S, T): B_s · C_t
        causal = (offs_t[None, :] >= offs_s[:, None]) & mask_t[None, :]
        decay = _exp(tl.minimum(cs_t[None, :] - cs_s[:, None], 0.0))
        MT = tl.where(causal, cbT * decay, 0.0)
        dyt = tl.load(dy_base + t[:, None] * s_y_l + offs_p[None, :] * s_y_p,
                      mask=mask_t[:, None] & mask_p[None, :], other=0.0)  # fmt: skip
        acc += tl.dot(MT.to(dyt.dtype), dyt, input_precision=DOT_PRECISION)

    mask_sp = mask_s[:, None] & mask_p[None, :]
    xs = tl.load(x_ptr + b * s_x_b + t_s[:, None] * s_x_l + head * s_x_h + offs_p[None, :] * s_x_p,
                 mask=mask_sp, other=0.0).to(tl.float32)  # fmt: skip
    dys = tl.load(dy_base + t_s[:, None] * s_y_l + offs_p[None, :] * s_y_p, mask=mask_sp, other=0.0)
    dys = dys.to(tl.float32)
    ddt_state = tl.sum(from_state * xs, 1)
    ddt = tl.sum(acc * xs, 1) + ddt_state
    dx = (acc + from_state) * dt_s[:, None]
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
            dx += Dv[None, :] * dys
            tl.atomic_add(
                dD_ptr + head * headdim + offs_p, tl.sum(dys * xs, 0), mask=mask_p, sem="relaxed"
            )
        else:
            dx += tl.load(D_ptr + head).to(tl.float32) * dys
            tl.atomic_add(dD_ptr + head, tl.sum(tl.sum(dys * xs, 1), 0), sem="relaxed")
    out_off = b * s_dx_b + t_s[:, None] * s_dx_l + head * s_dx_h + offs_p[None, :] * s_dx_p
    tl.store(dx_ptr + out_off, dx.to(dx_ptr.dtype.element_ty), mask=mask_sp)
    tl.store(ddt_ptr + row0 + offs_s, ddt, mask=mask_s)
    tl.store(v_ptr + row0 + offs_s, dt_s * ddt_state, mask=mask_s)  # V_s: the chunk-state term


@triton.jit
def _group_rows(seqlen, headdim, dstate, chunk_size, ngroups, BLOCK: tl.constexpr,
                P_PAD: tl.constexpr, N_PAD: tl.constexpr):  # fmt: skip
    """A (chunk, row block, batch, group, head split) program: its rows and masks."""
    blocks = tl.cdiv(chunk_size, BLOCK)
    c = tl.program_id(0) // blocks
    r0 = (tl.program_id(0) % blocks) * BLOCK
    b = (tl.program_id(1) // ngroups).to(tl.int64)
    group = tl.program_id(1) % ngroups
    chunk_len = tl.minimum(chunk_size, seqlen - c * chunk_size)
    offs_r = r0 + tl.arange(0, BLOCK)
    offs_p = tl.arange(0, P_PAD)
    offs_n = tl.arange(0, N_PAD)
    return (c, r0, b, group, tl.program_id(2), chunk_len, offs_r, offs_p, offs_n,
            offs_p < headdim, offs_n < dstate, offs_r < chunk_len, c * chunk_size + offs_r)  # fmt: skip


@CachedLaunch
@triton.jit
def _dB(
    x_ptr, C_ptr, dy_ptr, cs_ptr, dtb_ptr, g_ptr, dB_ptr,
    seqlen, nheads, heads_per_group, heads_per_split, headdim, dstate, chunk_size, n_chunks,
    ngroups,
    s_x_b, s_x_l, s_x_h, s_x_p, s_C_b, s_C_l, s_C_g, s_C_n, s_y_b, s_y_l, s_y_h, s_y_p,
    BLOCK_S: tl.constexpr, P_PAD: tl.constexpr, N_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """∂L/∂B of BLOCK_S rows, summed over this program's share of the group's heads.

    The in-chunk part sums the heads' weights WT[s, t] before its one matmul with C per row
    block, so the (S, T) x (T, N) product is paid once per block, not once per head."""
    c, s0, b, group, split, chunk_len, offs_s, offs_p, offs_n, mask_p, mask_n, mask_s, t_s = (
        _group_rows(seqlen, headdim, dstate, chunk_size, ngroups, BLOCK_S, P_PAD, N_PAD)
    )
    head0 = group * heads_per_group + split * heads_per_split
    x_base = x_ptr + b * s_x_b + t_s[:, None] * s_x_l + offs_p[None, :] * s_x_p
    mask_sp = mask_s[:, None] & mask_p[None, :]

    acc = tl.zeros((BLOCK_S, N_PAD), dtype=tl.float32)
    for i in range(heads_per_split):  # through the carried state: δ_s exp(cs_last − cs_s) x_s G
        head = head0 + i
        row0 = ((b * nheads + head) * n_chunks + c) * chunk_size
        cs_s, dt_s, _ = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_s, chunk_len)
        cs_last = tl.load(cs_ptr + row0 + chunk_size - 1)
        xs = tl.load(x_base + head * s_x_h, mask=mask_sp, other=0.0)
        g_off = ((b * n_chunks + c) * nheads + head) * headdim * dstate
        G = tl.load(g_ptr + g_off + offs_p[:, None] * dstate + offs_n[None, :],
                    mask=mask_p[:, None] & mask_n[None, :], other=0.0)  # fmt: skip
        from_state = tl.dot(xs, G.to(xs.dtype), input_precision=DOT_PRECISION)
        acc += from_state * (dt_s * _exp(cs_last - cs_s))[:, None]

    C_base = C_ptr + b * s_C_b + group * s_C_g
    for t0 in range(s0, chunk_len, BLOCK_S):  # within the chunk: Σ_{t ≥ s} WT[s, t] C_t
        offs_t = t0 + tl.arange(0, BLOCK_S)
        mask_t = offs_t < chunk_len
        t = c * chunk_size + offs_t
        causal = (offs_t[None, :] >= offs_s[:, None]) & mask_t[None, :]
        WT = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)  # Σ_h (dy_t · x_s) L[t, s] δ_s
        for i in range(heads_per_split):
            head = head0 + i
            row0 = ((b * nheads + head) * n_chunks + c) * chunk_size
            cs_s, dt_s, _ = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_s, chunk_len)
            cs_t = tl.load(cs_ptr + row0 + offs_t, mask=mask_t, other=0.0)
            xs = tl.load(x_base + head * s_x_h, mask=mask_sp, other=0.0)
            dytT = tl.load(dy_ptr + b * s_y_b + t[None, :] * s_y_l + head * s_y_h + offs_p[:, None] * s_y_p,
                           mask=mask_p[:, None] & mask_t[None, :], other=0.0)  # fmt: skip
            xdy = tl.dot(xs, dytT.to(xs.dtype), input_precision=DOT_PRECISION)  # (S, T)
            decay = _exp(tl.minimum(cs_t[None, :] - cs_s[:, None], 0.0))
            WT += tl.where(causal, xdy * decay * dt_s[:, None], 0.0)
        Ct = tl.load(C_base + t[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                     mask=mask_t[:, None] & mask_n[None, :], other=0.0)  # fmt: skip
        acc += tl.dot(WT.to(Ct.dtype), Ct, input_precision=DOT_PRECISION)
    batch = tl.num_programs(1) // ngroups
    off = (((split * batch + b) * seqlen + t_s[:, None]) * ngroups + group) * dstate
    tl.store(dB_ptr + off + offs_n[None, :], acc.to(dB_ptr.dtype.element_ty),
             mask=mask_s[:, None] & mask_n[None, :])  # fmt: skip


@triton.jit
def _dC_block_pair(
    x_base, B_base, dy_base, cs_ptr, dtb_ptr, q_ptr, Ct, head0, heads_per_split, b, c, t0, s0,
    nheads, chunk_size, n_chunks, chunk_len, offs_t, offs_n, mask_t, mask_p, mask_n,
    s_x_l, s_x_h, s_B_l, s_B_n, s_y_h,
    BLOCK_T: tl.constexpr, DIAGONAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Rows t of block τ (at t0) against the columns s of block j (at s0 ≤ t0): the (T, N) term
    Σ_s W[t, s] B_s of ∂L/∂C, with W summed over the heads first, and each head's part of Q."""
    offs_s = s0 + tl.arange(0, BLOCK_T)
    mask_s = offs_s < chunk_len
    s = c * chunk_size + offs_s
    Bs = tl.load(B_base + s[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                 mask=mask_s[:, None] & mask_n[None, :], other=0.0)  # fmt: skip
    CB = tl.dot(Ct, tl.trans(Bs), input_precision=DOT_PRECISION)  # (T, S): C_t · B_s
    causal = (offs_t[:, None] >= offs_s[None, :]) & mask_s[None, :]
    W = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)  # Σ_h (dy_t · x_s) L[t, s] δ_s
    for i in range(heads_per_split):
        head = head0 + i
        row0 = ((b * nheads + head) * n_chunks + c) * chunk_size
        cs_t = tl.load(cs_ptr + row0 + offs_t, mask=mask_t, other=0.0)
        cs_s, dt_s, _ = _chunk_rows(cs_ptr, dtb_ptr, row0, offs_s, chunk_len)
        dyt = tl.load(dy_base + head * s_y_h, mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        xsT = tl.load(x_base + s[None, :] * s_x_l + head * s_x_h,
                      mask=mask_p[:, None] & mask_s[None, :], other=0.0)  # fmt: skip
        dyx = tl.dot(dyt, xsT.to(dyt.dtype), input_precision=DOT_PRECISION)  # (T, S)
        decay = _exp(tl.minimum(cs_t[:, None] - cs_s[None, :], 0.0))
        W_head = tl.where(causal, dyx * decay * dt_s[None, :], 0.0)
        W += W_head
        W_full = W_head * CB
        if DIAGONAL:  # r in this block too: Σ_{t ≥ r} Σ_{s < r}
            below = tl.cumsum(W_full, 1) - W_full  # Σ_{s' < s} W_full[t, s']
            spans = tl.where(offs_t[:, None] >= offs_s[None, :], below, 0.0)
            tl.atomic_add(q_ptr + row0 + offs_s, tl.sum(spans, 0), mask=mask_s, sem="relaxed")
        else:
            cols = tl.sum(W_full, 0)  # r in block j
            tl.atomic_add(
                q_ptr + row0 + offs_s, tl.cumsum(cols, 0) - cols, mask=mask_s, sem="relaxed"
            )
            rows = tl.sum(W_full, 1)  # r in block τ
            # where() makes a fresh array: Triton 3.8's interpreter hands an atomic the buffer
            # under a reversed cumsum's view, not its values.
            suffix = tl.where(mask_t, tl.cumsum(rows, 0, reverse=True), 0.0)
            tl.atomic_add(q_ptr + row0 + offs_t, suffix, mask=mask_t, sem="relaxed")
            total = tl.sum(rows, 0)  # r in the blocks between
            for k0 in range(s0 + BLOCK_T, t0, BLOCK_T):
                offs_k = k0 + tl.arange(0, BLOCK_T)
                tl.atomic_add(q_ptr + row0 + offs_k, tl.zeros((BLOCK_T,), tl.float32) + total,
                              mask=offs_k < chunk_len, sem="relaxed")  # fmt: skip
    return tl.dot(W.to(Bs.dtype), Bs, input_precision=DOT_PRECISION)


@CachedLaunch
@triton.jit
def _dC(
    x_ptr, B_ptr, C_ptr, dy_ptr, cs_ptr, dtb_ptr, sprev_ptr, dC_ptr, u_ptr, q_ptr,
    seqlen, nheads, heads_per_group, heads_per_split, headdim, dstate, chunk_size, n_chunks,
    ngroups,
    s_x_b, s_x_l, s_x_h, s_x_p, s_B_b, s_B_l, s_B_g, s_B_n, s_C_b, s_C_l, s_C_g, s_C_n,
    s_y_b, s_y_l, s_y_h, s_y_p,
    BLOCK_T: tl.constexpr, P_PAD: tl.constexpr, N_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """∂L/∂C of BLOCK_T rows over a share of the group's heads, and per head the terms of ∂L/∂a
    that these rows produce: U_t (through the carried state) and their share of every Q_r.

    Q_r = Σ_{s < r ≤ t} W_full[t, s] with W_full = (C_t · B_s) W. Rows t of block τ meet columns
    s of block j ≤ τ; by the block k of r the triples split into four kinds, each summed directly:
      j = k = τ:   in-block, Σ_{t ≥ r} Σ_{s < r}                    (a 2-D prefix sum)
      j = k < τ:   Σ_{s < r} of the column sums                      (exclusive prefix sum)
      j < k = τ:   Σ_{t ≥ r} of the row sums                         (reverse prefix sum)
      j < k < τ:   the block's total, for every r of the blocks between."""
    c, t0, b, group, split, chunk_len, offs_t, offs_p, offs_n, mask_p, mask_n, mask_t, t = (
        _group_rows(seqlen, headdim, dstate, chunk_size, ngroups, BLOCK_T, P_PAD, N_PAD)
    )
    head0 = group * heads_per_group + split * heads_per_split
    Ct = tl.load(C_ptr + b * s_C_b + t[:, None] * s_C_l + group * s_C_g + offs_n[None, :] * s_C_n,
                 mask=mask_t[:, None] & mask_n[None, :], other=0.0)  # fmt: skip
    dy_base = dy_ptr + b * s_y_b + t[:, None] * s_y_l + offs_p[None, :] * s_y_p

    acc = tl.zeros((BLOCK_T, N_PAD), dtype=tl.float32)
    for i in range(heads_per_split):  # through the carried state: exp(cs_t) dy_t S_prev
        head = head0 + i
        row0 = ((b * nheads + head) * n_chunks + c) * chunk_size
        cs_t = tl.load(cs_ptr + row0 + offs_t, mask=mask_t, other=0.0)
        dyt = tl.load(dy_base + head * s_y_h, mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        sprev_off = ((b * n_chunks + c) * nheads + head) * headdim * dstate
        Sp = tl.load(sprev_ptr + sprev_off + offs_p[:, None] * dstate + offs_n[None, :],
                     mask=mask_p[:, None] & mask_n[None, :], other=0.0)  # fmt: skip
        from_state = tl.dot(dyt, Sp.to(dyt.dtype), input_precision=DOT_PRECISION)
        from_state = from_state * _exp(cs_t)[:, None]
        tl.store(u_ptr + row0 + offs_t, tl.sum(from_state * Ct.to(tl.float32), 1), mask=mask_t)
        acc += from_state

    pair = (x_ptr + b * s_x_b + offs_p[:, None] * s_x_p, B_ptr + b * s_B_b + group * s_B_g,
            dy_base, cs_ptr, dtb_ptr, q_ptr, Ct, head0, heads_per_split, b, c, t0)  # fmt: skip
    shape = (nheads, chunk_size, n_chunks, chunk_len, offs_t, offs_n, mask_t, mask_p, mask_n,
             s_x_l, s_x_h, s_B_l, s_B_n, s_y_h)  # fmt: skip
    for s0 in range(0, tl.minimum(t0, chunk_len), BLOCK_T):  # the blocks j < τ
        acc += _dC_block_pair(*pair, s0, *shape, BLOCK_T, False, DOT_PRECISION)
    acc += _dC_block_pair(*pair, t0, *shape, BLOCK_T, True, DOT_PRECISION)
    batch = tl.num_programs(1) // ngroups
    off = (((split * batch + b) * seqlen + t[:, None]) * ngroups + group) * dstate
    tl.store(dC_ptr + off + offs_n[None, :], acc.to(dC_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_n[None, :])  # fmt: skip


@CachedLaunch
@triton.jit
def _sum_splits(parts_ptr, dB_ptr, dC_ptr, size, splits, seqlen, ngroups, dstate,
                s_dB_b, s_dB_l, s_dB_g, s_dB_n, s_dC_b, s_dC_l, s_dC_g, s_dC_n,
                BLOCK: tl.constexpr):  # fmt: skip
    """∂L/∂B (program_id(1) = 0) or ∂L/∂C (1) from the head splits' fp32 parts, (2, splits, batch,
    seqlen, ngroups, dstate) contiguous: summed, and stored in the gradient's dtype and strides
    (its slot in the split input's gradient, when it has one)."""
    which = tl.program_id(1)
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = e < size
    part = parts_ptr + which.to(tl.int64) * splits * size + e
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(splits):
        acc += tl.load(part, mask=mask, other=0.0)
        part += size
    n = e % dstate  # one step at a time: a product of the i32 sizes could overflow
    rest = e // dstate
    g = rest % ngroups
    rest = rest // ngroups
    t = rest % seqlen
    b = rest // seqlen
    if which == 0:
        out = dB_ptr + b * s_dB_b + t * s_dB_l + g * s_dB_g + n * s_dB_n
        tl.store(out, acc.to(dB_ptr.dtype.element_ty), mask=mask)
    else:
        out = dC_ptr + b * s_dC_b + t * s_dC_l + g * s_dC_g + n * s_dC_n
        tl.store(out, acc.to(dC_ptr.dtype.element_ty), mask=mask)


@CachedLaunch
@triton.jit
def _ddt(
    dt_ptr, A_ptr, bias_ptr, dtb_ptr, q_ptr, u_ptr, v_ptr, ddt_direct_ptr, dlast_ptr,
    ddt_out_ptr, dA_ptr, dbias_ptr,
    seqlen, nheads, chunk_size, n_chunks, s_dt_b, s_dt_l, s_dt_h,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, T_PAD: tl.constexpr,
):  # fmt: skip
    """∂L/∂a_r = Q_r + Σ_{t ≥ r} U_t + Σ_{s < r} V_s + ∂L/∂cs_last, each a sum of terms that
    contain step r (no large terms cancelling), then ∂L/∂dt (through softplus), and this chunk's
    share of ∂L/∂A and ∂L/∂bias added to their per-head sums (zeroed)."""
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    chunk_len = tl.minimum(chunk_size, seqlen - c * chunk_size)
    offs = tl.arange(0, T_PAD)
    in_chunk = offs < chunk_size
    row0 = (pid_bh.to(tl.int64) * n_chunks + c) * chunk_size
    dtb = tl.load(dtb_ptr + row0 + offs, mask=in_chunk, other=0.0)
    direct = tl.load(ddt_direct_ptr + row0 + offs, mask=offs < chunk_len, other=0.0)
    valid = offs < chunk_len
    q = tl.load(q_ptr + row0 + offs, mask=valid, other=0.0)
    u = tl.load(u_ptr + row0 + offs, mask=valid, other=0.0)
    v = tl.load(v_ptr + row0 + offs, mask=valid, other=0.0)
    dlast = tl.load(dlast_ptr + pid_bh.to(tl.int64) * n_chunks + c)
    dA_step = q + tl.cumsum(u, 0, reverse=True) + (tl.cumsum(v, 0) - v) + dlast
    A = tl.load(A_ptr + head).to(tl.float32)
    ddt = direct + dA_step * A
    tl.atomic_add(dA_ptr + head, tl.sum(dA_step * dtb, 0), sem="relaxed")
    t = c * chunk_size + offs
    if SOFTPLUS:
        raw = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + head * s_dt_h, mask=valid, other=0.0)
        raw = raw.to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(bias_ptr + head).to(tl.float32)
        ddt = ddt * tl.sigmoid(raw)
    ddt = tl.where(valid, ddt, 0.0)
    tl.store(
        ddt_out_ptr + (b * seqlen + t) * nheads + head,
        ddt.to(ddt_out_ptr.dtype.element_ty),
        mask=valid,
    )
    tl.atomic_add(dbias_ptr + head, tl.sum(ddt, 0), sem="relaxed")


@CachedLaunch
@triton.jit
def _state_update(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    nheads, heads_per_group, headdim, dstate,
    s_s_b, s_s_h, s_s_p, s_s_n, s_x_b, s_x_h, s_x_p, s_dt_b, s_dt_h,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_h, s_z_p,
    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_P: tl.constexpr, N_PAD: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    b = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, N_PAD)
    mask_p = offs_p < headdim
    mask_n = offs_n < dstate
    mask_pn = mask_p[:, None] & mask_n[None, :]

    dt = tl.load(dt_ptr + b * s_dt_b + head * s_dt_h).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + head).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    decay = _exp(dt * tl.load(A_ptr + head).to(tl.float32))
    state_ptrs = (
        state_ptr + b * s_s_b + head * s_s_h + offs_p[:, None] * s_s_p + offs_n[None, :] * s_s_n
    )
    state = tl.load(state_ptrs, mask=mask_pn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_x_b + head * s_x_h + offs_p * s_x_p, mask=mask_p, other=0.0)
    x = x.to(tl.float32)
    B = tl.load(B_ptr + b * s_B_b + group * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0)
    C = tl.load(C_ptr + b * s_C_b + group * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0)
    state = state * decay + (dt * x)[:, None] * B.to(tl.float32)[None, :]
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=mask_pn)
    y = tl.sum(state * C.to(tl.float32)[None, :], 1)
    if HAS_D:
        if D_PER_P:
            y += tl.load(D_ptr + head * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32) * x
        else:
            y += tl.load(D_ptr + head).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + b * s_z_b + head * s_z_h + offs_p * s_z_p, mask=mask_p, other=0.0)
        silu, _ = silu_and_grad(z.to(tl.float32))
        y = y * silu
    tl.store(
        y_ptr + pid_bh.to(tl.int64) * headdim + offs_p, y.to(y_ptr.dtype.element_ty), mask=mask_p
    )


# -- launch helpers -----------------------------------------------------------------------------
def _or(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """An absent optional input is passed as any tensor; its constexpr flag keeps it unread."""
    return t if t is not None else placeholder


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * rank


def _precision(t: torch.Tensor) -> str:
    """fp32 inputs get exact fp32 products (no tf32), so fp32 results keep fp32 accuracy."""
    return "ieee" if t.dtype == torch.float32 else "tf32"


def state_tile(heads: int, headdim: int, dstate: int, programs: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_N) of `_states_fwd`'s state tiles for ``heads`` = batch × heads and a
    headdim × dstate state. Its programs walk the whole sequence, so a longer sequence at the same
    tokens per step (a smaller batch) means fewer, longer programs: from 64 × 128 the tiles are
    halved, the wider side first, until there are at least ``programs`` of them or both sides
    are 16 (the tensor cores' minimum)."""
    tile_p, tile_n = min(dot_width(headdim), 64), min(dot_width(dstate), 128)
    while heads * cdiv(headdim, tile_p) * cdiv(dstate, tile_n) < programs:
        if tile_n >= tile_p and tile_n > 16:
            tile_n //= 2
        elif tile_p > 16:
            tile_p //= 2
        else:
            break
    return tile_p, tile_n


def passing_block(heads: int, state_size: int, programs: int) -> int:
    """BLOCK of `_state_passing_bwd` (state elements per program) for ``heads`` = batch × heads:
    1024 (or the padded state), halved down to 128 until there are at least ``programs``
    programs, for the same reason as :func:`state_tile`."""
    block = min(1024, next_pow2(state_size))
    while heads * cdiv(state_size, block) < programs and block > 128:
        block //= 2
    return block


def _programs_wanted(device: torch.device, config: LaunchConfig) -> int:
    sms = multiprocessors(device) if device.type == "cuda" else 1
    return config.state_programs_per_sm * sms


def _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus_, initial_states,
             store_final: bool, for_backward: bool, config: LaunchConfig):  # fmt: skip
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    n_chunks = cdiv(seqlen, chunk_size)
    dev = x.device
    f32 = {"device": dev, "dtype": torch.float32}
    cs = torch.empty((batch, nheads, n_chunks, chunk_size), **f32)
    dtb = torch.empty_like(cs)
    sprev = torch.empty((batch, n_chunks, nheads, headdim, dstate), device=dev, dtype=x.dtype)
    final = torch.empty((batch, nheads, headdim, dstate), **f32) if store_final else cs
    p_pad, n_pad = dot_width(headdim), dot_width(dstate)
    precision = _precision(x)
    tile_p, tile_n = state_tile(batch * nheads, headdim, dstate, _programs_wanted(dev, config))
    grid = (batch * nheads, cdiv(headdim, tile_p), cdiv(dstate, tile_n))
    _states_fwd[grid](
        x, dt, A, _or(dt_bias, A), B, _or(initial_states, x), cs, dtb, sprev, final,
        seqlen, nheads, nheads // ngroups, headdim, dstate, chunk_size, n_chunks,
        *x.stride(), *dt.stride(), *B.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus_, HAS_INIT=initial_states is not None,
        STORE_FINAL=store_final, T_PAD=dot_width(chunk_size), BLOCK_P=tile_p, BLOCK_N=tile_n,
        DOT_PRECISION=precision, num_warps=config.warps, num_stages=config.stages,
    )  # fmt: skip
    block_p = min(p_pad, 64)
    y = torch.empty((batch, seqlen, nheads, headdim), device=dev, dtype=x.dtype)
    store_pre = for_backward and z is not None
    ypre = torch.empty_like(y) if store_pre else y
    block_m = min(config.block, dot_width(chunk_size))
    grid = (
        n_chunks * cdiv(chunk_size, block_m),
        batch * nheads,
        cdiv(headdim, block_p),
    )
    _chunk_scan_fwd[grid](
        x, B, C, _or(D, x), _or(z, x), cs, dtb, sprev, y, ypre,
        seqlen, nheads, nheads // ngroups, headdim, dstate, chunk_size, n_chunks,
        *x.stride(), *B.stride(), *C.stride(), *_strides(z, 4),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        STORE_PRE=store_pre, BLOCK_M=block_m, BLOCK_P=block_p, N_PAD=n_pad,
        DOT_PRECISION=precision, num_warps=config.warps, num_stages=config.stages,
    )  # fmt: skip
    saved = {"cs": cs, "dtb": dtb, "sprev": sprev, "ypre": ypre if store_pre else None}
    return y, (final if store_final else None), saved


SUM_BLOCK = 1024  # elements per program of _sum_splits


def _grad_buffer(t: torch.Tensor) -> torch.Tensor:
    """Where a kernel writes ∂L/∂t in t's dtype: t's slot in a split's gradient, else new."""
    slot = grad_slot(t)
    return slot if slot is not None else torch.empty(t.shape, device=t.device, dtype=t.dtype)


def _backward(dout, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus_,
              initial_states, saved, config: LaunchConfig):  # fmt: skip
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    heads_per_group = nheads // ngroups
    n_chunks = cdiv(seqlen, chunk_size)
    dev = x.device
    f32 = {"device": dev, "dtype": torch.float32}
    cs, dtb, sprev, ypre = saved["cs"], saved["dtb"], saved["sprev"], saved["ypre"]
    p_pad, n_pad = dot_width(headdim), dot_width(dstate)
    block = min(config.block, dot_width(chunk_size))
    blocks_per_chunk = cdiv(chunk_size, block)
    precision = _precision(x)
    launch = {"num_warps": config.warps, "num_stages": config.stages}

    # dy = dout · silu(z) (materialised only when gated) and each chunk's local ∂L/∂S_prev.
    dy = torch.empty_like(x, memory_format=torch.contiguous_format) if z is not None else dout
    dz = torch.empty_like(dy) if z is not None else None
    dlocal = torch.empty((batch, n_chunks, nheads, headdim, dstate), **f32)
    block_p = min(p_pad, 64)
    _dstate_local[(n_chunks, batch * nheads, cdiv(headdim, block_p))](
        dout, _or(z, dout), _or(ypre, dout), C, cs, dy, _or(dz, dout), dlocal,
        seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
        *dout.stride(), *_strides(z, 4), *C.stride(),
        HAS_Z=z is not None, BLOCK_T=block, BLOCK_P=block_p, N_PAD=n_pad,
        DOT_PRECISION=precision, **launch,
    )  # fmt: skip

    # Summed by atomics, so zeroed, with one fill each: per step Q and per (b, h, chunk)
    # ∂L/∂cs_last (after Q, so that Q's rows keep their alignment); and the per-head parameters'
    # ∂L/∂A, ∂L/∂bias, ∂L/∂D, apart (autograd may keep a gradient as .grad, and a view keeps its
    # whole buffer alive)
    chunk_rows = batch * nheads * n_chunks
    sums = torch.zeros(chunk_rows * (chunk_size + 1), **f32)
    q_terms = sums[: chunk_rows * chunk_size].view(batch, nheads, n_chunks, chunk_size)
    dlast = sums[chunk_rows * chunk_size :].view(batch, nheads, n_chunks)
    d_size = D.numel() if D is not None else 0
    params = torch.zeros(2 * nheads + d_size, **f32)
    dA, dbias = params[:nheads], params[nheads : 2 * nheads]
    dD = params[2 * nheads :].view(D.shape) if D is not None else None

    # G per chunk (in the inputs' dtype for the matmuls) and the chunk-end terms of ∂L/∂cs.
    g = torch.empty_like(sprev)
    dinit = (
        torch.empty((batch, nheads, headdim, dstate), **f32) if initial_states is not None else None
    )
    state_size = headdim * dstate
    block_state = passing_block(batch * nheads, state_size, _programs_wanted(dev, config))
    _state_passing_bwd[(batch * nheads, cdiv(state_size, block_state))](
        dlocal, sprev, cs, _or(dfinal, dlocal), g, dlast, _or(dinit, dlocal),
        nheads, state_size, chunk_size, n_chunks,
        HAS_DFINAL=dfinal is not None, HAS_INIT=initial_states is not None, BLOCK=block_state,
        num_warps=4,
    )  # fmt: skip

    dx = grad_slot(x)
    if dx is None:
        dx = torch.empty((batch, seqlen, nheads, headdim), device=dev, dtype=x.dtype)
    # Per (b, h, chunk, step), fp32: the direct ∂L/∂δ, and the parts V and U of ∂L/∂a (_ddt),
    # written wherever `_ddt` reads them (steps < chunk_len), so they need no zero fill (checked:
    # NaN-filled, the interpreted tests still pass).
    ddt_direct = torch.empty((batch, nheads, n_chunks, chunk_size), **f32)
    v_terms, u_terms = torch.empty_like(ddt_direct), torch.empty_like(ddt_direct)
    _dx[(n_chunks * blocks_per_chunk, batch * nheads)](
        x, B, C, _or(D, x), dy, cs, dtb, g, dx, ddt_direct, v_terms, _or(dD, dlast),
        seqlen, nheads, heads_per_group, headdim, dstate, chunk_size, n_chunks,
        *x.stride(), *B.stride(), *C.stride(), *dy.stride(), *dx.stride(),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        BLOCK_S=block, P_PAD=p_pad, N_PAD=n_pad, DOT_PRECISION=precision, **launch,
    )  # fmt: skip

    splits = max(
        s
        for s in range(1, min(config.head_splits, heads_per_group) + 1)
        if heads_per_group % s == 0
    )
    # One split stores the gradients in their own dtype; several store fp32 parts to sum.
    if splits > 1:
        parts = torch.empty((2, splits, batch, seqlen, ngroups, dstate), **f32)
        dB, dC = parts[0], parts[1]
    else:
        dB = torch.empty((1, batch, seqlen, ngroups, dstate), device=dev, dtype=B.dtype)
        dC = torch.empty_like(dB, dtype=C.dtype)
    grid = (n_chunks * blocks_per_chunk, batch * ngroups, splits)
    common = (seqlen, nheads, heads_per_group, heads_per_group // splits, headdim, dstate,
              chunk_size, n_chunks, ngroups)  # fmt: skip
    _dB[grid](
        x, C, dy, cs, dtb, g, dB, *common, *x.stride(), *C.stride(), *dy.stride(),
        BLOCK_S=block, P_PAD=p_pad, N_PAD=n_pad, DOT_PRECISION=precision, **launch,
    )  # fmt: skip
    _dC[grid](
        x, B, C, dy, cs, dtb, sprev, dC, u_terms, q_terms, *common,
        *x.stride(), *B.stride(), *C.stride(), *dy.stride(),
        BLOCK_T=block, P_PAD=p_pad, N_PAD=n_pad, DOT_PRECISION=precision, **launch,
    )  # fmt: skip

    if splits > 1:
        grad_B, grad_C = _grad_buffer(B), _grad_buffer(C)
        size = dB[0].numel()
        _sum_splits[(cdiv(size, SUM_BLOCK), 2)](
            parts, grad_B, grad_C, size, splits, seqlen, ngroups, dstate,
            *grad_B.stride(), *grad_C.stride(), BLOCK=SUM_BLOCK, num_warps=4,
        )  # fmt: skip
    else:
        grad_B, grad_C = dB[0], dC[0]

    ddt = torch.empty((batch, seqlen, nheads), device=dev, dtype=dt.dtype)
    _ddt[(n_chunks, batch * nheads)](
        dt, A, _or(dt_bias, A), dtb, q_terms, u_terms, v_terms, ddt_direct, dlast, ddt, dA, dbias,
        seqlen, nheads, chunk_size, n_chunks, *dt.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=softplus_, T_PAD=next_pow2(chunk_size),
        num_warps=4,
    )  # fmt: skip
    return {
        "x": dx,
        "dt": ddt,
        "A": dA,
        "B": grad_B,
        "C": grad_C,
        "D": dD,
        "z": dz,
        "dt_bias": dbias,
        "initial_states": dinit,
    }


class _SSDScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, softplus_,
                return_final_states):  # fmt: skip
        config = _config()
        needs_grad = any(ctx.needs_input_grad[:9])
        y, final, saved = _forward(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, softplus_, initial_states,
            return_final_states, needs_grad, config,
        )  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states,
                                  saved["cs"], saved["dtb"], saved["sprev"], saved["ypre"])  # fmt: skip
            ctx.chunk_size, ctx.softplus = chunk_size, softplus_
        return y if final is None else (y, final)

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        x, dt, A, B, C, D, z, dt_bias, initial_states, cs, dtb, sprev, ypre = ctx.saved_tensors
        dfinal = _contiguous(dfinal)  # read as contiguous; autograd may hand an expanded one
        saved = {"cs": cs, "dtb": dtb, "sprev": sprev, "ypre": ypre}
        grads = _backward(
            dout, dfinal, x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, ctx.softplus,
            initial_states, saved, _config(),
        )  # fmt: skip
        names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
        inputs = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        out = [
            place_grad(t, grads[name]) if needed and t is not None else None
            for name, t, needed in zip(names, inputs, ctx.needs_input_grad[:9])
        ]
        return (*out, None, None, None)


# -- public functions -----------------------------------------------------------------------------
def _check_heads(op: str, nheads: int, B: torch.Tensor) -> None:
    if nheads % B.shape[-2]:
        raise ValueError(
            f"{op} (triton): B has {B.shape[-2]} groups, which do not divide {nheads} heads"
        )


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
    """Triton SSD chunked scan; see the module docstring."""
    tensors = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}
    tensors["initial_states"] = initial_states
    check_device(OP, tensors)
    check_float(OP, tensors)
    check_interpretable_dot(OP, {"x": x, "B": B, "C": C})
    check_rank(OP, "x", x, (4,), "(batch, length, heads, headdim)")
    check_offsets(
        OP,
        {"x": x, "dt": dt, "B": B, "C": C, "z": z},
        "Scan the sequence in pieces, each from the last one's state (initial_states, "
        "return_final_states), or use impl='reference'.",
    )
    batch, seqlen, nheads, headdim = x.shape
    check_rank(OP, "B", B, (4,), "(batch, length, groups, dstate)")
    ngroups, dstate = B.shape[2], B.shape[3]
    check_shape(OP, "B", B, (batch, seqlen, ngroups, dstate))
    check_shape(OP, "C", C, (batch, seqlen, ngroups, dstate))
    check_shape(OP, "dt", dt, (batch, seqlen, nheads))
    check_shape(OP, "A", A, (nheads,))
    check_shape(OP, "dt_bias", dt_bias, (nheads,))
    check_shape(OP, "z", z, (batch, seqlen, nheads, headdim))
    if D is not None and D.dim() == 2:
        check_shape(OP, "D", D, (nheads, headdim))
    else:
        check_shape(OP, "D", D, (nheads,))
    check_shape(OP, "initial_states", initial_states, (batch, nheads, headdim, dstate))
    _check_heads(OP, nheads, B)
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= 256:
        raise ValueError(f"{OP} (triton): chunk_size must be an int in 1..256, got {chunk_size!r}")
    # The kernels index these small per-head tensors as contiguous (a no-op when they are).
    A, D, dt_bias, initial_states = (_contiguous(t) for t in (A, D, dt_bias, initial_states))
    return _SSDScanFn.apply(
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        initial_states,
        chunk_size,
        bool(dt_softplus),
        bool(return_final_states),
    )


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
    """One decoding step: ``state`` (b, h, p, n) is updated in place; returns y (b, h, p).

    x, z: (b, h, p); dt: (b, h); B, C: (b, g, n). For generation only: it records no gradient.
    """
    op = "ssd_state_update"
    tensors = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z}
    tensors["dt_bias"] = dt_bias
    check_step_inputs(op, tensors, "ssd_scan")
    check_rank(op, "state", state, (4,), "(batch, heads, headdim, dstate)")
    batch, nheads, headdim, dstate = state.shape
    check_rank(op, "B", B, (3,), "(batch, groups, dstate)")
    ngroups = B.shape[1]
    check_shape(op, "x", x, (batch, nheads, headdim))
    check_shape(op, "z", z, (batch, nheads, headdim))
    check_shape(op, "dt", dt, (batch, nheads))
    check_shape(op, "A", A, (nheads,))
    check_shape(op, "dt_bias", dt_bias, (nheads,))
    check_shape(op, "B", B, (batch, ngroups, dstate))
    check_shape(op, "C", C, (batch, ngroups, dstate))
    if D is not None and D.dim() == 2:
        check_shape(op, "D", D, (nheads, headdim))
    else:
        check_shape(op, "D", D, (nheads,))
    _check_heads(op, nheads, B)

    A, D, dt_bias = (_contiguous(t) for t in (A, D, dt_bias))  # indexed as contiguous
    y = torch.empty((batch, nheads, headdim), device=x.device, dtype=x.dtype)
    block_p = min(next_pow2(headdim), 16 if interpreting() else 32)
    _state_update[(batch * nheads, cdiv(headdim, block_p))](
        state, x, dt, A, B, C, _or(D, x), _or(z, x), _or(dt_bias, A), y,
        nheads, nheads // ngroups, headdim, dstate,
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *_strides(z, 3),
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), BLOCK_P=block_p,
        N_PAD=next_pow2(dstate), num_warps=1 if interpreting() else 4,
    )  # fmt: skip
    return y
