"""Selective scan (Mamba-1) in Triton: forward, backward and the one-step decoding update.

Per channel d and state n, with δ = softplus(δ_raw + bias) (or δ_raw + bias):

    a_t = exp(δ_t A[d, n])        b_t = δ_t u_t B_t[n]
    h_t = a_t h_{t-1} + b_t       y_t = Σ_n C_t[n] h_t + D u_t       out_t = y_t · silu(z_t)

Shapes: u, δ, z, out (b, d, l); A (d, n); B, C (b, n, l) or grouped (b, g, n, l) where channel d
reads group d // (d / g); D, bias (d,); last state (b, d, n) fp32.

Parallel over (batch, channel, state), sequential over time, as Mamba's CUDA kernel within a
thread: one program per (batch, block of BLOCK_D channels) holds the state (BLOCK_D, n) in fp32
registers and walks the sequence one step at a time, CHUNK steps unrolled per loop iteration so
that the loads of a chunk are in flight together. b · d · n independent recurrences fill the GPU
at the sizes Mamba uses; a parallel scan along time (tried first) moved every step through warp
shuffles and was 8× slower (docs/kernels_notes.md).

Forward: when gradients are needed it also stores the state entering every chunk (b, d, chunks, n).

Inference (no gradient needed): a chunk-parallel forward, ``_selective_scan_inference``, as
Mamba's CUDA kernel: the per-step work that does not depend on the state (loads, softplus,
silu, δ·u) is done once per (channel, step) on a (BLOCK_D, CHUNK) tile, then for each state n
(unrolled) the chunk's recurrence is a parallel scan along time (``tl.associative_scan`` over the
affine maps x ↦ a x + b) started from the state the previous chunk ended in. On an H100 it is
2.9x the sequential forward; with gradients the sequential pair stays: a forward storing the
backward's states costs it most of that, and a chunk-parallel backward (two scans per state, one
reversed) was not faster (docs/kernels_notes.md v7). For channels-innermost inputs at small
batch × channels, ``_selective_scan_by_channel`` instead: a thread per channel with all its
states in registers, sequential over time, the sequence cut into segments scanned in two passes
(1.6x faster there; docs/kernels_notes.md v9).

Backward: the same programs walk the chunks in reverse. For each chunk it recomputes h_t from the
stored state into registers (CHUNK + 1 states), then runs the adjoint recurrence
e_t = C_t dy_t + a_{t+1} e_{t+1} (e_t = ∂L/∂h_t) backwards through the chunk, reading every
gradient off e and h:

    ∂L/∂δ_t = Σ_n e_t (A a_t h_{t-1} + B_t u_t)     ∂L/∂u_t = δ_t Σ_n e_t B_t + D dy_t
    ∂L/∂A   = Σ_t δ_t e_t a_t h_{t-1}                ∂L/∂B_t = Σ_d δ_t u_t e_t
    ∂L/∂C_t = Σ_d dy_t h_t

∂L/∂B and ∂L/∂C sum over the channels of a group: each program reduces its BLOCK_D channels and
writes the sums to its own slice of an fp32 buffer, added up over the programs afterwards (or, with
``bc_partials=False``, adds them into (b, g, n, l) atomically: d / BLOCK_D programs then contend
for every address; on an H100 at the Mamba-130m shapes forward+backward took 11-16 % longer
at batch 2 and 8, 0-4 % at batch 4).

Outputs (y; du, dδ, dz) take u's layout: channels innermost when u is a transposed (b, l, d)
projection, as in the Mamba block, so each step's stores are adjacent and no copy is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mambaverse.kernels.triton_support import (
    LOG2E,
    CachedLaunch,
    cdiv,
    channels_innermost,
    check_device,
    check_float,
    check_offsets,
    check_rank,
    check_shape,
    check_step_inputs,
    empty_like_sequence,
    interpreting,
    multiprocessors,
    next_pow2,
    records_gradient,
    silu_and_grad,
    softplus,
)

OP = "selective_scan"


@dataclass(frozen=True)
class LaunchConfig:
    block_d: int  # channels per program
    chunk: int  # time steps unrolled per loop iteration (and, with gradients, per stored state)
    warps: int
    # Backward only: each program writes its block's ∂L/∂B, ∂L/∂C to its own slice of an fp32
    # buffer (b, blocks, l, n), summed over the blocks afterwards, instead of adding into
    # (b, g, n, l) atomically (d / BLOCK_D programs contend for every address).
    bc_partials: bool = False
    # Time segments: when (batch × channel blocks) programs are fewer than segment_below, the
    # sequence is cut into segments (of at least min_segment_chunks chunks) scanned in parallel,
    # up to target_programs programs. A first pass computes each segment's own end state
    # (forward) or start adjoint (backward) from zero, and its total decay; each program then
    # starts from the composition of the segments before it. It costs a lighter extra pass and
    # pays off only when the GPU is starved (H100, fwd+bwd: 1.5x faster at 384 programs, 2.9x
    # at 192, 1.2x slower at 768; docs/kernels_notes.md v6).
    segment_below: int = 512
    target_programs: int = 4096
    min_segment_chunks: int = 32
    # Register cap: a program needing all its registers (~250 for the backward) leaves room for
    # `resident_per_sm` of them per SM. When an unsegmented grid has more programs than the GPU
    # holds at once, they are compiled with at most `register_cap` registers (spilling some),
    # so that more stay resident and no part-empty second wave follows. H100, fwd+bwd at
    # d=1536, l=2048: 1.26x faster at batch 8, 1.04-1.05x at 12 and 16; at batch 4, whose grid
    # fits, the cap cost 15 %, and with time segments (more programs, each shorter) the
    # Mamba-130m training step at 8k-16k tokens was 10 % slower, so segmented grids keep all
    # their registers.
    register_cap: int | None = None
    resident_per_sm: int = 8


# Chosen on an H100 with examples/benchmarks/tune_kernels.py and the third session's A/B of the
# dB / dC sums (docs/kernels_notes.md).
FORWARD = LaunchConfig(block_d=8, chunk=8, warps=1)
# Without gradients: channels per program, time steps per parallel scan (tune_kernels.py, "ss
# inference" rows; docs/kernels_notes.md v7).
INFERENCE = LaunchConfig(block_d=2, chunk=256, warps=1)
BACKWARD = LaunchConfig(block_d=8, chunk=8, warps=1, bc_partials=True, register_cap=168)
# The interpreter runs every element in Python: small tiles, several chunks even at tiny lengths.
INTERPRETED = LaunchConfig(
    block_d=2, chunk=4, warps=1, segment_below=64, target_programs=64, min_segment_chunks=1
)
INTERPRETED_INFERENCE = LaunchConfig(block_d=2, chunk=8, warps=1)
# Without gradients, for channels-innermost inputs (the Mamba block's): a thread per channel,
# 4 steps per iteration (fixed), segments up to target_programs warps of at least 64 iterations
# (docs/kernels_notes.md v9).
BY_CHANNEL = LaunchConfig(
    block_d=32, chunk=4, warps=1, segment_below=2048, target_programs=2048, min_segment_chunks=64
)
# It is used while batch × channel blocks stays at most this: on an H100 it was 1.6x faster than
# the chunk-parallel forward at b=4, d=1536 (192 blocks; l = 2k-16k) and made a Mamba LM's
# batch-1 prefill 1.2-1.3x faster (96-128 blocks), but the prefill at 384 blocks (b=8, d=1536;
# b=4, d=3072) 2-8 % slower.
BY_CHANNEL_MAX_BLOCKS = 256
INTERPRETED_BY_CHANNEL = LaunchConfig(
    block_d=4, chunk=4, warps=1, segment_below=64, target_programs=64, min_segment_chunks=2
)


@triton.jit
def _skip_and_bias(D_ptr, bias_ptr, offs_d, mask_d, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_D: tl.constexpr):  # fmt: skip
    """D and the δ bias of the channels offs_d in fp32 (BLOCK_D,), zero when absent."""
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return Dv, bias


@triton.jit
def _channels(pid_d, dim, dstate, d_per_group, A_ptr, s_A_d, s_A_n, D_ptr, bias_ptr,
              HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
              N_PAD: tl.constexpr):  # fmt: skip
    """A program's channels: their indices, masks, B/C group, A (fp32), D and δ bias (or 0)."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N_PAD)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // d_per_group  # BLOCK_D divides d_per_group
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    Dv, bias = _skip_and_bias(D_ptr, bias_ptr, offs_d, mask_d, HAS_D, HAS_BIAS, BLOCK_D)
    return offs_d, offs_n, mask_d, mask_n, mask_dn, group, A.to(tl.float32), Dv, bias


@triton.jit
def _input_pointers(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, ckpt_ptr, pid_b, offs_d, offs_n, group,
                    dim, dstate, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
                    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n):  # fmt: skip
    """Step 0 of u, δ, z (BLOCK_D,) and of B, C (N,) for this program's channels and group, and
    the first chunk-start state (BLOCK_D, N); a step t or chunk c is an offset from these."""
    u_p = u_ptr + pid_b * s_u_b + offs_d * s_u_d
    dt_p = dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d
    z_p = z_ptr + pid_b * s_z_b + offs_d * s_z_d
    B_p = B_ptr + pid_b * s_B_b + group * s_B_g + offs_n * s_B_n
    C_p = C_ptr + pid_b * s_C_b + group * s_C_g + offs_n * s_C_n
    ckpt_p = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * dstate + offs_n[None, :]
    return u_p, dt_p, z_p, B_p, C_p, ckpt_p


@triton.jit
def _program(u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, ckpt_ptr, A_ptr, D_ptr, bias_ptr,
             dim, dstate, d_per_group, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
             s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
             HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
             N_PAD: tl.constexpr):  # fmt: skip
    """What every scan program starts from: its batch and time segment (grid axes 1 and 2),
    its channels (see _channels) with A·log2(e), and its input pointers (see _input_pointers)."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d, offs_n, mask_d, mask_n, mask_dn, group, A, Dv, bias = _channels(
        tl.program_id(0), dim, dstate, d_per_group, A_ptr, s_A_d, s_A_n, D_ptr, bias_ptr,
        HAS_D, HAS_BIAS, BLOCK_D, N_PAD,
    )  # fmt: skip
    u_p, dt_p, z_p, B_p, C_p, ckpt_p = _input_pointers(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, ckpt_ptr, pid_b, offs_d, offs_n, group,
        dim, dstate, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
        s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    )  # fmt: skip
    return (pid_b, tl.program_id(2), offs_d, offs_n, mask_d, mask_n, mask_dn, group, A,
            A * LOG2E, Dv, bias, u_p, dt_p, z_p, B_p, C_p, ckpt_p)  # fmt: skip


@triton.jit
def _load_chunk(u_p, dt_p, B_p, C_p, z_p, start, seqlen, mask_d, mask_n,
                s_u_l, s_dt_l, s_B_l, s_C_l, s_z_l, HAS_Z: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    """Steps start … start + CHUNK − 1, each a tuple over steps: u, δ_raw, z (BLOCK_D,) and B, C
    (N,), in fp32, zero past the end (z is an empty tuple without z)."""
    us, dts, Bs, Cs, zs = (), (), (), (), ()
    for i in tl.static_range(CHUNK):
        t = start + i
        md = mask_d & (t < seqlen)
        mn = mask_n & (t < seqlen)
        # Tuples grow by concatenation: Triton 3.6 parses no starred tuples.
        us = us + (tl.load(u_p + t * s_u_l, mask=md, other=0.0).to(tl.float32),)  # noqa: RUF005
        dts = dts + (tl.load(dt_p + t * s_dt_l, mask=md, other=0.0).to(tl.float32),)  # noqa: RUF005
        Bs = Bs + (tl.load(B_p + t * s_B_l, mask=mn, other=0.0).to(tl.float32),)  # noqa: RUF005
        Cs = Cs + (tl.load(C_p + t * s_C_l, mask=mn, other=0.0).to(tl.float32),)  # noqa: RUF005
        if HAS_Z:
            zs = zs + (tl.load(z_p + t * s_z_l, mask=md, other=0.0).to(tl.float32),)  # noqa: RUF005
    return us, dts, Bs, Cs, zs


@triton.jit
def _discretise(dt_raw, bias, valid, SOFTPLUS: tl.constexpr):
    """δ (BLOCK_D,) and its slope dδ/dδ_raw; steps past the end get δ = 0, the identity map."""
    dt = dt_raw + bias
    slope = tl.full(dt.shape, 1.0, tl.float32)
    if SOFTPLUS:
        slope = tl.sigmoid(dt)
        dt = softplus(dt)
    return tl.where(valid, dt, 0.0), slope


@triton.jit
def _segment_pointers(seg_h_ptr, seg_dt_ptr, pid_b, offs_d, offs_n, dim, dstate, n_segs):
    """Segment 0's summaries for this program: a state or adjoint (BLOCK_D, N) in (b, S, d, n)
    and Σδ (BLOCK_D,) in (b, S, d); segment j is j·d·n and j·d further."""
    seg_h_p = seg_h_ptr + ((pid_b * n_segs * dim + offs_d[:, None]) * dstate + offs_n[None, :])
    seg_dt_p = seg_dt_ptr + pid_b * n_segs * dim + offs_d
    return seg_h_p, seg_dt_p


@CachedLaunch
@triton.jit
def _selective_scan_segments(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, dout_ptr, seg_h_ptr, seg_dt_ptr,
    dim, dstate, seqlen, d_per_group, n_chunks, seg_chunks,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    ADJOINT: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """A segment's summary from a zero start: its Σδ, and its end state h (forward) or the
    adjoint a·e it passes to the segment before it (ADJOINT, backward), each linear in what
    enters the segment with slope exp(A Σδ)."""
    pid_b, seg, offs_d, offs_n, mask_d, mask_n, mask_dn, _group, _A, A2, _no_D, bias, u_p, dt_p, \
        z_p, B_p, C_p, _no_ckpt = _program(
            u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, seg_h_ptr, A_ptr, A_ptr, bias_ptr,
            dim, dstate, d_per_group, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
            s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
            False, HAS_BIAS, BLOCK_D, N_PAD,
        )  # fmt: skip
    dout_p = dout_ptr + pid_b * s_o_b + offs_d * s_o_d
    first = seg * seg_chunks
    count = tl.minimum(first + seg_chunks, n_chunks) - first
    h = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)  # the state, or the adjoint carry
    dt_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for step in range(count):
        chunk = first + count - 1 - step if ADJOINT else first + step
        us, dts, Bs, Cs, zs = _load_chunk(
            u_p, dt_p, B_p, C_p, z_p, chunk * CHUNK, seqlen, mask_d, mask_n,
            s_u_l, s_dt_l, s_B_l, s_C_l, s_z_l, HAS_Z and ADJOINT, CHUNK,
        )  # fmt: skip
        if ADJOINT:
            for i in tl.static_range(CHUNK - 1, -1, -1):
                t = chunk * CHUNK + i
                dt, _ = _discretise(dts[i], bias, t < seqlen, SOFTPLUS)
                dy = tl.load(dout_p + t * s_o_l, mask=mask_d & (t < seqlen), other=0.0)
                dy = dy.to(tl.float32)
                if HAS_Z:
                    silu, _ = silu_and_grad(zs[i])
                    dy = dy * silu
                h = tl.exp2(dt[:, None] * A2) * (h + dy[:, None] * Cs[i][None, :])
                dt_sum += dt
        else:
            for i in tl.static_range(CHUNK):
                dt, _ = _discretise(dts[i], bias, chunk * CHUNK + i < seqlen, SOFTPLUS)
                h = tl.exp2(dt[:, None] * A2) * h + (dt * us[i])[:, None] * Bs[i][None, :]
                dt_sum += dt
    seg_h_p, seg_dt_p = _segment_pointers(seg_h_ptr, seg_dt_ptr, pid_b, offs_d, offs_n, dim,
                                          dstate, tl.num_programs(2))  # fmt: skip
    tl.store(seg_h_p + seg * dim * dstate, h, mask=mask_dn)
    tl.store(seg_dt_p + seg * dim, dt_sum, mask=mask_d)


@CachedLaunch
@triton.jit
def _selective_scan_fwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    y_ptr, last_ptr, ckpt_ptr, seg_h_ptr, seg_dt_ptr,
    dim, dstate, seqlen, d_per_group, n_chunks, seg_chunks,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_z_b, s_z_d, s_z_l,
    s_y_b, s_y_d, s_y_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_LAST: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_b, seg, offs_d, offs_n, mask_d, mask_n, mask_dn, _group, _A, A2, Dv, bias, u_p, dt_p, \
        z_p, B_p, C_p, ckpt_p = _program(
            u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, ckpt_ptr, A_ptr, D_ptr, bias_ptr,
            dim, dstate, d_per_group, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
            s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
            HAS_D, HAS_BIAS, BLOCK_D, N_PAD,
        )  # fmt: skip
    y_p = y_ptr + pid_b * s_y_b + offs_d * s_y_d

    # The state entering this segment: the earlier segments' own end states, each decayed by
    # the segments after it (h ← exp(A Σδ) h + h_segment).
    h = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    seg_h_p, seg_dt_p = _segment_pointers(seg_h_ptr, seg_dt_ptr, pid_b, offs_d, offs_n, dim,
                                          dstate, tl.num_programs(2))  # fmt: skip
    for j in range(seg):
        decay = tl.exp2(tl.load(seg_dt_p + j * dim, mask=mask_d, other=0.0)[:, None] * A2)
        h = decay * h + tl.load(seg_h_p + j * dim * dstate, mask=mask_dn, other=0.0)
    for chunk in range(seg * seg_chunks, tl.minimum(seg * seg_chunks + seg_chunks, n_chunks)):
        if STORE_CKPT:
            tl.store(ckpt_p + chunk * dstate, h, mask=mask_dn)
        # Every load of the chunk before its first store: the compiler cannot move a load past a
        # store that may alias it, and a step waiting on its own loads idles for the latency.
        us, dts, Bs, Cs, zs = _load_chunk(
            u_p, dt_p, B_p, C_p, z_p, chunk * CHUNK, seqlen, mask_d, mask_n,
            s_u_l, s_dt_l, s_B_l, s_C_l, s_z_l, HAS_Z, CHUNK,
        )  # fmt: skip
        for i in tl.static_range(CHUNK):
            t = chunk * CHUNK + i
            valid = t < seqlen
            u = us[i]
            dt, _ = _discretise(dts[i], bias, valid, SOFTPLUS)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bs[i][None, :]
            y = tl.sum(h * Cs[i][None, :], axis=1) + Dv * u
            if HAS_Z:
                silu, _ = silu_and_grad(zs[i])
                y = y * silu
            tl.store(y_p + t * s_y_l, y.to(y_ptr.dtype.element_ty), mask=mask_d & valid)

    if STORE_LAST:
        last = last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :]
        tl.store(last, h, mask=mask_dn & (seg == tl.num_programs(2) - 1))


@CachedLaunch
@triton.jit
def _selective_scan_bwd(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr,
    seg_e_ptr, seg_dt_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, dstate, seqlen, d_per_group, n_groups, n_chunks, seg_chunks,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l, s_g_b, s_g_d, s_g_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BC_PARTIALS: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    pid_b, seg, offs_d, offs_n, mask_d, mask_n, mask_dn, group, A, A2, Dv, bias, u_p, dt_p, \
        z_p, B_p, C_p, ckpt_p = _program(
            u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, ckpt_ptr, A_ptr, D_ptr, bias_ptr,
            dim, dstate, d_per_group, n_chunks, s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d,
            s_A_d, s_A_n, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
            HAS_D, HAS_BIAS, BLOCK_D, N_PAD,
        )  # fmt: skip
    dout_p = dout_ptr + pid_b * s_o_b + offs_d * s_o_d
    # du, dδ, dz share the strides s_g_*; dB and dC are fp32, (b, blocks, l, n) partial sums
    # per program or (b, g, n, l) added into atomically.
    grad_p = pid_b * s_g_b + offs_d * s_g_d
    if BC_PARTIALS:
        dBC_p = ((pid_b * tl.num_programs(0) + tl.program_id(0)) * seqlen) * dstate + offs_n
        s_dBC_l = dstate
    else:
        dBC_p = ((pid_b * n_groups + group) * dstate + offs_n) * seqlen
        s_dBC_l = 1

    # The adjoint entering this segment's last step, a_{t+1} e_{t+1}: the later segments' own
    # adjoints, the latest first, each decayed through the segments before it.
    n_segs = tl.num_programs(2)
    carry = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    seg_e_p, seg_dt_p = _segment_pointers(seg_e_ptr, seg_dt_ptr, pid_b, offs_d, offs_n, dim,
                                          dstate, n_segs)  # fmt: skip
    for k in range(n_segs - 1 - seg):
        j = n_segs - 1 - k
        decay = tl.exp2(tl.load(seg_dt_p + j * dim, mask=mask_d, other=0.0)[:, None] * A2)
        carry = decay * carry + tl.load(seg_e_p + j * dim * dstate, mask=mask_dn, other=0.0)
    dA = tl.zeros((BLOCK_D, N_PAD), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    first = seg * seg_chunks
    count = tl.minimum(first + seg_chunks, n_chunks) - first
    for step in range(count):
        chunk = first + count - 1 - step
        us, dts, Bs, Cs, zs = _load_chunk(
            u_p, dt_p, B_p, C_p, z_p, chunk * CHUNK, seqlen, mask_d, mask_n,
            s_u_l, s_dt_l, s_B_l, s_C_l, s_z_l, HAS_Z, CHUNK,
        )  # fmt: skip
        douts = ()
        for i in tl.static_range(CHUNK):
            t = chunk * CHUNK + i
            dout = tl.load(dout_p + t * s_o_l, mask=mask_d & (t < seqlen), other=0.0)
            douts = douts + (dout.to(tl.float32),)  # noqa: RUF005
        # Recompute the chunk's states: states[i] is the state entering step i of the chunk.
        h = tl.load(ckpt_p + chunk * dstate, mask=mask_dn, other=0.0)
        states = (h,)
        for i in tl.static_range(CHUNK):
            dt, _ = _discretise(dts[i], bias, chunk * CHUNK + i < seqlen, SOFTPLUS)
            h = tl.exp2(dt[:, None] * A2) * h + (dt * us[i])[:, None] * Bs[i][None, :]
            states = states + (h,)  # noqa: RUF005

        for i in tl.static_range(CHUNK - 1, -1, -1):
            t = chunk * CHUNK + i
            valid = t < seqlen
            md = mask_d & valid
            u, B, C, dout = us[i], Bs[i], Cs[i], douts[i]
            dt, slope = _discretise(dts[i], bias, valid, SOFTPLUS)
            h_prev = states[i]
            h = states[i + 1]
            if HAS_Z:
                y = tl.sum(h * C[None, :], axis=1) + Dv * u
                silu, dsilu = silu_and_grad(zs[i])
                tl.store(
                    dz_ptr + grad_p + t * s_g_l,
                    (dout * y * dsilu).to(dz_ptr.dtype.element_ty),
                    mask=md,
                )
                dy = dout * silu
            else:
                dy = dout

            e = carry + dy[:, None] * C[None, :]  # ∂L/∂h_t
            a = tl.exp2(dt[:, None] * A2)
            e_ah = e * a * h_prev
            eB = tl.sum(e * B[None, :], axis=1)
            ddt = (tl.sum(e_ah * A, axis=1) + u * eB) * slope
            dA += dt[:, None] * e_ah
            dD += dy * u
            dbias += ddt
            du = dt * eB + Dv * dy
            tl.store(du_ptr + grad_p + t * s_g_l, du.to(du_ptr.dtype.element_ty), mask=md)
            tl.store(ddt_ptr + grad_p + t * s_g_l, ddt.to(ddt_ptr.dtype.element_ty), mask=md)
            mn = mask_n & valid
            dB = tl.sum(e * (dt * u)[:, None], axis=0)
            dC = tl.sum(h * dy[:, None], axis=0)
            if BC_PARTIALS:
                tl.store(dB_ptr + dBC_p + t * s_dBC_l, dB, mask=mn)
                tl.store(dC_ptr + dBC_p + t * s_dBC_l, dC, mask=mn)
            else:
                tl.atomic_add(dB_ptr + dBC_p + t * s_dBC_l, dB, mask=mn, sem="relaxed")
                tl.atomic_add(dC_ptr + dBC_p + t * s_dBC_l, dC, mask=mn, sem="relaxed")
            carry = a * e

    # Per-(batch, segment) partial sums of the parameter gradients, added up by the caller.
    row = pid_b * n_segs + seg
    tl.store(dA_ptr + (row * dim + offs_d[:, None]) * dstate + offs_n[None, :], dA, mask=mask_dn)
    tl.store(dD_ptr + row * dim + offs_d, dD, mask=mask_d)
    tl.store(dbias_ptr + row * dim + offs_d, dbias, mask=mask_d)


@triton.jit
def _compose(a1, b1, a2, b2):
    """x ↦ a2 (a1 x + b1) + b2: the affine step (a1, b1) followed by (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_tile(ptr, s_d, s_l, offs_d, t, mask):
    """A (BLOCK_D, CHUNK) tile of a (d, l) slice at steps t (1, CHUNK), in fp32, zero outside
    ``mask``. With s_d = 0 every channel's row is the same (d, l) row (B_t[n], C_t[n]): loaded
    in the tile's own layout it needs no exchange between threads to meet the other tiles."""
    tile = tl.load(ptr + offs_d[:, None] * s_d + t * s_l, mask=mask, other=0.0)
    return tile.to(tl.float32)


@triton.jit
def _column(tile, index, CHUNK: tl.constexpr):
    """Column ``index`` of a (BLOCK_D, CHUNK) tile, as (BLOCK_D,)."""
    return tl.sum(tl.where(tl.arange(0, CHUNK)[None, :] == index, tile, 0.0), axis=1)


@triton.jit
def _rates_and_zero_states(A_ptr, s_A_d, s_A_n, offs_d, mask_d, BLOCK_D: tl.constexpr,
                           DSTATE: tl.constexpr):  # fmt: skip
    """A[:, n]·log2(e) (fp32) and zero states: tuples over n of (BLOCK_D,)."""
    A2 = ()
    hs = ()
    for n in tl.static_range(DSTATE):
        column = tl.load(A_ptr + offs_d * s_A_d + n * s_A_n, mask=mask_d, other=0.0)
        A2 = A2 + (column.to(tl.float32) * LOG2E,)  # noqa: RUF005 (Triton 3.6: no starred tuples)
        hs = hs + (tl.zeros((BLOCK_D,), dtype=tl.float32),)  # noqa: RUF005
    return A2, hs


@CachedLaunch
@triton.jit
def _selective_scan_inference(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    dim, seqlen, d_per_group,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l, s_z_b, s_z_d, s_z_l,
    s_y_b, s_y_d, s_y_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr, DSTATE: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """The forward without gradients, chunk-parallel: one program per (channel block, batch)
    walks the sequence in chunks of CHUNK steps; in a chunk, each state n's recurrence is a
    parallel scan along time (unrolled over n, so the per-(channel, step) work is done once for
    all states) started from the state the previous chunk ended in."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_d = tl.program_id(0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    group = (pid_d * BLOCK_D) // d_per_group  # BLOCK_D divides d_per_group
    B_p = B_ptr + pid_b * s_B_b + group * s_B_g
    C_p = C_ptr + pid_b * s_C_b + group * s_C_g
    Dv, bias = _skip_and_bias(D_ptr, bias_ptr, offs_d, mask_d, HAS_D, HAS_BIAS, BLOCK_D)
    # hs: the state entering the chunk
    A2, hs = _rates_and_zero_states(A_ptr, s_A_d, s_A_n, offs_d, mask_d, BLOCK_D, DSTATE)
    for chunk in range(tl.cdiv(seqlen, CHUNK)):
        t = chunk * CHUNK + tl.arange(0, CHUNK)[None, :]  # (1, CHUNK)
        mask = mask_d[:, None] & (t < seqlen)
        u = _load_tile(u_ptr + pid_b * s_u_b, s_u_d, s_u_l, offs_d, t, mask)
        dt_raw = _load_tile(dt_ptr + pid_b * s_dt_b, s_dt_d, s_dt_l, offs_d, t, mask)
        dt, _ = _discretise(dt_raw, bias[:, None], mask, SOFTPLUS)
        w = dt * u
        y = Dv[:, None] * u
        ends = ()
        for n in tl.static_range(DSTATE):
            B = _load_tile(B_p + n * s_B_n, 0, s_B_l, offs_d, t, mask)
            C = _load_tile(C_p + n * s_C_n, 0, s_C_l, offs_d, t, mask)
            decay, h = tl.associative_scan((tl.exp2(dt * A2[n][:, None]), w * B), 1, _compose)
            h += decay * hs[n][:, None]
            y += h * C
            ends = ends + (_column(h, CHUNK - 1, CHUNK),)  # noqa: RUF005
        hs = ends
        if HAS_Z:
            silu, _ = silu_and_grad(_load_tile(z_ptr + pid_b * s_z_b, s_z_d, s_z_l, offs_d, t,
                                               mask))  # fmt: skip
            y = y * silu
        y_tile = y_ptr + pid_b * s_y_b + offs_d[:, None] * s_y_d + t * s_y_l
        tl.store(y_tile, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_LAST:
        for n in tl.static_range(DSTATE):
            tl.store(last_ptr + (pid_b * dim + offs_d) * DSTATE + n, hs[n], mask=mask_d)


@triton.jit
def _halves(tile):
    """(BLOCK_D, 2m) -> its even and its odd steps, (BLOCK_D, m) each: moves within a thread."""
    return tl.split(tl.reshape(tile, (tile.shape[0], tile.shape[1] // 2, 2)))


@triton.jit
def _columns(tile):
    """The 4 columns (BLOCK_D,) of a (BLOCK_D, 4) tile whose steps lie in one thread."""
    even, odd = _halves(tile)
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def _stack(cols):
    """The (BLOCK_D, 4) tile of 4 columns: the inverse of _columns."""
    even = tl.join(cols[0], cols[2])
    odd = tl.join(cols[1], cols[3])
    return tl.reshape(tl.join(even, odd), (even.shape[0], 4))


@triton.jit
def _chunk_columns(ptr, offs_d):
    """4 consecutive fp32 values, the same for every channel, as 4 columns (BLOCK_D,)."""
    return _columns(tl.load(ptr + offs_d[:, None] * 0 + tl.arange(0, 4)[None, :]))


@CachedLaunch
@triton.jit
def _selective_scan_by_channel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, seg_ptr,
    dim, seqlen, d_per_group, seg_len,
    s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_A_d, s_A_n, s_z_b, s_z_d, s_z_l,
    s_y_b, s_y_d, s_y_l,
    OUTPUTS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_LAST: tl.constexpr, BLOCK_D: tl.constexpr,
    DSTATE: tl.constexpr,
):  # fmt: skip
    """The forward without gradients, a thread per channel: each thread holds its channel's
    DSTATE states in registers and walks one segment of the sequence step by step, 4 steps per
    loop iteration. Program (channel block, batch, segment s).

    OUTPUTS=False (segments 0 … S−2): the segment's own end state from zero and its Σδ, stored
    in seg_ptr (b, S, DSTATE + 1, d). OUTPUTS=True: the state entering segment s composed from
    those summaries (h ← exp(A Σδ_r) h + h_r over r < s), then y over the segment.

    B and C come as fp32 (b, g, l/4, DSTATE, 4), zero past the end: each state's 4 steps are one
    16-byte load, the same address in every thread."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    n_segs = tl.num_programs(2) + (0 if OUTPUTS else 1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    group = (pid_d * BLOCK_D) // d_per_group  # BLOCK_D divides d_per_group
    BC_p = (pid_b * (dim // d_per_group) + group) * tl.cdiv(seqlen, 4) * (4 * DSTATE)
    Dv, bias = _skip_and_bias(D_ptr, bias_ptr, offs_d, mask_d, HAS_D, HAS_BIAS, BLOCK_D)
    A2, hs = _rates_and_zero_states(A_ptr, s_A_d, s_A_n, offs_d, mask_d, BLOCK_D, DSTATE)
    summaries = seg_ptr + pid_b * n_segs * (DSTATE + 1) * dim + offs_d  # + (s (N + 1) + n) d
    if OUTPUTS:
        for before in range(seg):
            row = summaries + before * (DSTATE + 1) * dim
            dt_sum = tl.load(row + DSTATE * dim, mask=mask_d, other=0.0)
            entered = ()
            for n in tl.static_range(DSTATE):
                own = tl.load(row + n * dim, mask=mask_d, other=0.0)
                entered = entered + (tl.exp2(dt_sum * A2[n]) * hs[n] + own,)  # noqa: RUF005
            hs = entered
    start = seg * seg_len
    stop = tl.minimum(start + seg_len, seqlen)
    dt_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    u_p = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_p = dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    z_p = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    # The next iteration's u, δ (and z) are loaded while this one computes: an iteration is
    # too short to cover a memory latency (H100, Mamba block layout: 1.5x faster).
    t = start + tl.arange(0, 4)[None, :]
    mask = mask_d[:, None] & (t < stop)
    u_next = tl.load(u_p + t * s_u_l, mask=mask, other=0.0)
    dt_next = tl.load(dt_p + t * s_dt_l, mask=mask, other=0.0)
    z_next = u_next
    if OUTPUTS and HAS_Z:
        z_next = tl.load(z_p + t * s_z_l, mask=mask, other=0.0)
    for t0 in range(start, stop, 4):
        t = t0 + tl.arange(0, 4)[None, :]
        mask = mask_d[:, None] & (t < stop)
        u = u_next.to(tl.float32)
        dt_raw = dt_next.to(tl.float32)
        z = z_next.to(tl.float32)
        mask_next = mask_d[:, None] & (t + 4 < stop)
        u_next = tl.load(u_p + (t + 4) * s_u_l, mask=mask_next, other=0.0)
        dt_next = tl.load(dt_p + (t + 4) * s_dt_l, mask=mask_next, other=0.0)
        if OUTPUTS and HAS_Z:
            z_next = tl.load(z_p + (t + 4) * s_z_l, mask=mask_next, other=0.0)
        dt, _ = _discretise(dt_raw, bias[:, None], mask, SOFTPLUS)
        if not OUTPUTS:
            dt_sum += tl.sum(dt, axis=1)
        dts = _columns(dt)
        ws = _columns(dt * u)
        ys = _columns(Dv[:, None] * u)
        ends = ()
        for n in tl.static_range(DSTATE):
            Bs = _chunk_columns(B_ptr + BC_p + t0 * DSTATE + n * 4, offs_d)
            h = hs[n]
            h_steps = ()
            for j in tl.static_range(4):
                h = tl.exp2(dts[j] * A2[n]) * h + ws[j] * Bs[j]
                h_steps = h_steps + (h,)  # noqa: RUF005
            if OUTPUTS:
                Cs = _chunk_columns(C_ptr + BC_p + t0 * DSTATE + n * 4, offs_d)
                summed = ()
                for j in tl.static_range(4):
                    summed = summed + (ys[j] + Cs[j] * h_steps[j],)  # noqa: RUF005
                ys = summed
            ends = ends + (h,)  # noqa: RUF005
        hs = ends
        if OUTPUTS:
            y = _stack(ys)
            if HAS_Z:
                silu, _ = silu_and_grad(z)
                y = y * silu
            y_tile = y_ptr + pid_b * s_y_b + offs_d[:, None] * s_y_d + t * s_y_l
            tl.store(y_tile, y.to(y_ptr.dtype.element_ty), mask=mask)
    if OUTPUTS:
        if STORE_LAST:
            is_last = mask_d & (seg == n_segs - 1)
            for n in tl.static_range(DSTATE):
                tl.store(last_ptr + (pid_b * dim + offs_d) * DSTATE + n, hs[n], mask=is_last)
    else:
        row = summaries + seg * (DSTATE + 1) * dim
        tl.store(row + DSTATE * dim, dt_sum, mask=mask_d)
        for n in tl.static_range(DSTATE):
            tl.store(row + n * dim, hs[n], mask=mask_d)


@CachedLaunch
@triton.jit
def _selective_state_update(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, dstate, d_per_group,
    s_s_b, s_s_d, s_s_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N_PAD)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    group = (pid_d * BLOCK_D) // d_per_group

    state_ptrs = state_ptr + pid_b * s_s_b + offs_d[:, None] * s_s_d + offs_n[None, :] * s_s_n
    state = tl.load(state_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    B = tl.load(
        B_ptr + pid_b * s_B_b + group * s_B_g + offs_n * s_B_n, mask=offs_n < dstate, other=0.0
    )
    C = tl.load(
        C_ptr + pid_b * s_C_b + group * s_C_g + offs_n * s_C_n, mask=offs_n < dstate, other=0.0
    )

    a = tl.exp2(dt[:, None] * A.to(tl.float32) * LOG2E)
    state = a * state + (dt * x)[:, None] * B.to(tl.float32)[None, :]
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(state * C.to(tl.float32)[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0)
        silu, _ = silu_and_grad(z.to(tl.float32))
        y = y * silu
    tl.store(y_ptr + pid_b * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


# -- launch helpers -----------------------------------------------------------------------------
def _block_d(config: LaunchConfig, d_per_group: int) -> int:
    """The configured block, shrunk so that no block straddles two B/C groups."""
    block = config.block_d
    while d_per_group % block:
        block //= 2
    return block


def _grouped(BC: torch.Tensor) -> torch.Tensor:
    return BC if BC.dim() == 4 else BC.unsqueeze(1)


def _or(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """An absent optional input is passed as any tensor; its constexpr flag keeps it unread."""
    return t if t is not None else placeholder


def _strides(t: torch.Tensor | None, rank: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * rank


def _segments(config: LaunchConfig, programs: int, n_chunks: int) -> tuple[int, int]:
    """(segments, chunks per segment): one segment from config.segment_below programs on, else
    enough to reach config.target_programs programs, each at least config.min_segment_chunks
    chunks long, none empty."""
    if programs >= config.segment_below or n_chunks == 0:
        return 1, n_chunks
    wanted = cdiv(config.target_programs, programs)
    n_segs = max(1, min(wanted, n_chunks // config.min_segment_chunks))
    seg_chunks = cdiv(n_chunks, n_segs)
    return cdiv(n_chunks, seg_chunks), seg_chunks


def _register_cap(
    config: LaunchConfig, programs: int, segments: int, device: torch.device
) -> dict[str, int]:
    """Launch options capping the registers per thread when an unsegmented grid outnumbers what
    the GPU holds at full registers (see LaunchConfig.register_cap); none otherwise."""
    if config.register_cap is None or segments > 1 or device.type != "cuda":
        return {}
    resident = config.resident_per_sm * multiprocessors(device)
    return {"maxnreg": config.register_cap} if programs > resident else {}


def _launch_segments(
    adjoint: bool, u, delta, A, B4, C4, z, delta_bias, dout, softplus_: bool, grid, seg_chunks,
    n_chunks: int, block_d: int, chunk: int, config: LaunchConfig,
):  # fmt: skip
    """Every segment's summary (see _selective_scan_segments): (b, S, d, n) and (b, S, d) fp32;
    with one segment nothing is run and the (unread) buffers are empty."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_segs = grid[2]
    f32 = {"device": u.device, "dtype": torch.float32}
    if n_segs == 1:
        return torch.empty(0, **f32), torch.empty(0, **f32)
    seg_h = torch.empty((batch, n_segs, dim, dstate), **f32)
    seg_dt = torch.empty((batch, n_segs, dim), **f32)
    _selective_scan_segments[grid](
        u, delta, A, B4, C4, _or(z, u), _or(delta_bias, u), _or(dout, u), seg_h, seg_dt,
        dim, dstate, seqlen, dim // B4.shape[1], n_chunks, seg_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides(z, 3),
        *_strides(dout, 3),
        ADJOINT=adjoint, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus_, BLOCK_D=block_d, N_PAD=next_pow2(dstate), CHUNK=chunk,
        num_warps=config.warps,
    )  # fmt: skip
    return seg_h, seg_dt


def _launch_forward(
    u, delta, A, B, C, D, z, delta_bias, softplus_: bool, store_last: bool, store_ckpt: bool,
    config: LaunchConfig, chunk: int,
):  # fmt: skip
    """y (b, d, l), last state or None, chunk-start states (b, d, chunks, n) or None."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    B4, C4 = _grouped(B), _grouped(C)
    d_per_group = dim // B4.shape[1]
    n_chunks = cdiv(seqlen, chunk)
    y = empty_like_sequence(u)
    f32 = {"device": u.device, "dtype": torch.float32}
    last = torch.empty((batch, dim, dstate), **f32) if store_last else y
    ckpt = torch.empty((batch, dim, n_chunks, dstate), **f32) if store_ckpt else y
    block_d = _block_d(config, d_per_group)
    n_segs, seg_chunks = _segments(config, cdiv(dim, block_d) * batch, n_chunks)
    grid = (cdiv(dim, block_d), batch, n_segs)
    seg_h, seg_dt = _launch_segments(
        False, u, delta, A, B4, C4, None, delta_bias, None, softplus_, grid, seg_chunks,
        n_chunks, block_d, chunk, config,
    )  # fmt: skip
    _selective_scan_fwd[grid](
        u, delta, A, B4, C4, _or(D, u), _or(z, u), _or(delta_bias, u),
        y, last, ckpt, seg_h, seg_dt,
        dim, dstate, seqlen, d_per_group, n_chunks, seg_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides(z, 3),
        *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus_,
        STORE_LAST=store_last, STORE_CKPT=store_ckpt,
        BLOCK_D=block_d, N_PAD=next_pow2(dstate), CHUNK=chunk, num_warps=config.warps,
    )  # fmt: skip
    return y, (last if store_last else None), (ckpt if store_ckpt else None)


def _launch_inference(
    u, delta, A, B, C, D, z, delta_bias, softplus_: bool, store_last: bool, config: LaunchConfig
):  # fmt: skip
    """y (b, d, l) and the last state (b, d, n) fp32 or None, by _selective_scan_inference."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    # Each state's row of B and C is read along time: a time-strided slice (the Mamba block's
    # B, C come from a (b, l, ·) projection) costs one memory sector per step and state, so it
    # is copied time-contiguous first (b·n·l values, ~1 % of the scan's inputs).
    B4, C4 = (BC if BC.stride(-1) == 1 else BC.contiguous() for BC in (_grouped(B), _grouped(C)))
    d_per_group = dim // B4.shape[1]
    y = empty_like_sequence(u)
    f32 = {"device": u.device, "dtype": torch.float32}
    last = torch.empty((batch, dim, dstate), **f32) if store_last else y  # every row written
    block_d = _block_d(config, d_per_group)
    _selective_scan_inference[(cdiv(dim, block_d), batch)](
        u, delta, A, B4, C4, _or(D, u), _or(z, u), _or(delta_bias, u), y, last,
        dim, seqlen, d_per_group,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides(z, 3),
        *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus_, STORE_LAST=store_last,
        BLOCK_D=block_d, DSTATE=dstate, CHUNK=config.chunk, num_warps=config.warps,
    )  # fmt: skip
    return y, (last if store_last else None)


def _launch_by_channel(
    u, delta, A, B, C, D, z, delta_bias, softplus_: bool, store_last: bool, config: LaunchConfig
):  # fmt: skip
    """y (b, d, l) and the last state (b, d, n) fp32 or None, by _selective_scan_by_channel:
    when the segments' first pass is needed it runs first, over all segments but the last."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = cdiv(seqlen, 4)
    # (b, g, n, l) -> fp32 (b, g, l/4, n, 4), zero-padded: b·n·l values, ~1 % of the inputs
    B4, C4 = (
        F.pad(_grouped(BC), (0, n_chunks * 4 - seqlen))
        .unflatten(-1, (n_chunks, 4))
        .transpose(-3, -2)
        .to(torch.float32)
        .contiguous()
        for BC in (B, C)
    )
    d_per_group = dim // B4.shape[1]
    block_d = _block_d(config, d_per_group)
    blocks = cdiv(dim, block_d)
    n_segs, seg_chunks = _segments(config, blocks * batch * config.warps, n_chunks)
    y = empty_like_sequence(u)
    f32 = {"device": u.device, "dtype": torch.float32}
    last = torch.empty((batch, dim, dstate), **f32) if store_last else y  # every row written
    summaries = torch.empty((batch, n_segs, dstate + 1, dim), **f32)
    for outputs, segments in ((False, n_segs - 1), (True, n_segs)):
        if segments == 0:
            continue
        _selective_scan_by_channel[(blocks, batch, segments)](
            u, delta, A, B4, C4, _or(D, u), _or(z, u), _or(delta_bias, u), y, last, summaries,
            dim, seqlen, d_per_group, seg_chunks * 4,
            *u.stride(), *delta.stride(), *A.stride(), *_strides(z, 3), *y.stride(),
            OUTPUTS=outputs, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus_, STORE_LAST=store_last,
            BLOCK_D=block_d, DSTATE=dstate, num_warps=config.warps,
        )  # fmt: skip
    return y, (last if store_last else None)


def _launch_backward(
    dout, u, delta, A, B, C, D, z, delta_bias, softplus_: bool, ckpt, config: LaunchConfig,
    chunk: int,
):  # fmt: skip
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    B4, C4 = _grouped(B), _grouped(C)
    n_groups = B4.shape[1]
    d_per_group = dim // n_groups
    f32 = {"device": u.device, "dtype": torch.float32}
    du = empty_like_sequence(u)  # du, dδ, dz: one layout, the kernel takes one set of strides
    ddelta = empty_like_sequence(u, delta.dtype)
    dz = empty_like_sequence(u, z.dtype) if z is not None else du
    block_d = _block_d(config, d_per_group)
    n_chunks = ckpt.shape[2]
    n_segs, seg_chunks = _segments(config, cdiv(dim, block_d) * batch, n_chunks)
    grid = (cdiv(dim, block_d), batch, n_segs)
    seg_e, seg_dt = _launch_segments(
        True, u, delta, A, B4, C4, z, delta_bias, dout, softplus_, grid, seg_chunks,
        n_chunks, block_d, chunk, config,
    )  # fmt: skip
    dA = torch.empty((batch * n_segs, dim, dstate), **f32)
    dD = torch.empty((batch * n_segs, dim), **f32)
    dbias = torch.empty((batch * n_segs, dim), **f32)
    if config.bc_partials:
        dB = torch.empty((batch, grid[0], seqlen, dstate), **f32)
        dC = torch.empty_like(dB)
    else:
        dB = torch.zeros((batch, n_groups, dstate, seqlen), **f32)
        dC = torch.zeros_like(dB)
    _selective_scan_bwd[grid](
        u, delta, A, B4, C4, _or(D, u), _or(z, u), _or(delta_bias, u), dout,
        ckpt, seg_e, seg_dt, du, ddelta, dz, dA, dB, dC, dD, dbias,
        dim, dstate, seqlen, d_per_group, n_groups, n_chunks, seg_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *_strides(z, 3),
        *dout.stride(), *du.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus_, BC_PARTIALS=config.bc_partials,
        BLOCK_D=block_d, N_PAD=next_pow2(dstate), CHUNK=chunk, num_warps=config.warps,
        **_register_cap(config, grid[0] * grid[1], n_segs, u.device),
    )  # fmt: skip
    if config.bc_partials:  # (b, blocks, l, n) -> (b, g, n, l): a group's blocks are adjacent
        dB, dC = (part.unflatten(1, (n_groups, -1)).sum(2).transpose(-1, -2) for part in (dB, dC))
    return {
        "u": du,
        "delta": ddelta,
        "A": dA.sum(0),
        "B": dB.reshape(B.shape),
        "C": dC.reshape(C.shape),
        "D": dD.sum(0),
        "z": dz if z is not None else None,
        "delta_bias": dbias.sum(0),
    }


def _configs() -> tuple[LaunchConfig, LaunchConfig]:
    return (INTERPRETED, INTERPRETED) if interpreting() else (FORWARD, BACKWARD)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus_, return_last_state):
        fwd, bwd = _configs()
        needs_grad = any(ctx.needs_input_grad[:8])
        # With gradients the forward keeps a state every backward chunk, so it scans in those.
        y, last, ckpt = _launch_forward(
            u, delta, A, B, C, D, z, delta_bias, softplus_, return_last_state, needs_grad,
            fwd, bwd.chunk if needs_grad else fwd.chunk,
        )  # fmt: skip
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.softplus = softplus_
        if last is None:
            return y
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dout, *_unused_last_state_grad):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        bwd = _configs()[1]
        grads = _launch_backward(
            dout, u, delta, A, B, C, D, z, delta_bias, ctx.softplus, ckpt, bwd, bwd.chunk
        )
        inputs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z}
        inputs["delta_bias"] = delta_bias
        out = []
        for (name, t), needed in zip(inputs.items(), ctx.needs_input_grad[:8]):
            out.append(grads[name].to(t.dtype) if needed and t is not None else None)
        return (*out, None, None)


# -- public functions -----------------------------------------------------------------------------
def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z}
    tensors["delta_bias"] = delta_bias
    check_device(OP, tensors)
    check_float(OP, tensors)
    check_offsets(OP, tensors, "Use impl='reference' for sequences this long.")
    check_rank(OP, "u", u, (3,), "(batch, dim, length)")
    batch, dim, seqlen = u.shape
    check_rank(OP, "A", A, (2,), "(dim, dstate)")
    check_shape(OP, "A", A, (dim, A.shape[1]))
    dstate = A.shape[1]
    for name, t in (("delta", delta), ("z", z)):
        check_shape(OP, name, t, (batch, dim, seqlen))
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        check_shape(OP, name, t, (dim,))
    for name, t in (("B", B), ("C", C)):
        layout = "(batch, dstate, length) or (batch, groups, dstate, length)"
        check_rank(OP, name, t, (3, 4), layout)
        groups = t.shape[1] if t.dim() == 4 else 1
        expected = (batch, dstate, seqlen) if t.dim() == 3 else (batch, groups, dstate, seqlen)
        check_shape(OP, name, t, expected)
        if dim % groups:
            raise ValueError(
                f"{OP} (triton): {name} has {groups} groups, which do not divide dim={dim}"
            )
    if B.dim() != C.dim() or B.shape != C.shape:
        raise ValueError(f"{OP} (triton): B has shape {tuple(B.shape)} but C has {tuple(C.shape)}")


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
    """Triton selective scan; see the module docstring. The last state carries no gradient."""
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    # The kernels index the per-channel vectors densely; everything else takes any strides.
    D, delta_bias = (t.contiguous() if t is not None else None for t in (D, delta_bias))
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if records_gradient(*inputs):
        return _SelectiveScanFn.apply(*inputs, bool(delta_softplus), bool(return_last_state))
    # Inference (under no_grad autograd would still ask for states): channels-innermost inputs
    # at small batch × channels a thread per channel, else the chunk-parallel forward, the
    # faster of the two on an H100 (docs/kernels_notes.md v9).
    flags = (bool(delta_softplus), bool(return_last_state))
    config = INTERPRETED_BY_CHANNEL if interpreting() else BY_CHANNEL
    blocks = u.shape[0] * cdiv(u.shape[1], config.block_d)
    if channels_innermost(u) and blocks <= BY_CHANNEL_MAX_BLOCKS:
        y, last = _launch_by_channel(*inputs, *flags, config)
    else:
        config = INTERPRETED_INFERENCE if interpreting() else INFERENCE
        y, last = _launch_inference(*inputs, *flags, config)
    return (y, last) if return_last_state else y


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
    """One decoding step: ``state`` (b, d, n) is updated in place; returns y (b, d).

    x, dt, z: (b, d); B, C: (b, n) or (b, g, n). For generation only: it records no gradient.
    """
    op = "selective_state_update"
    tensors = {"state": state, "x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z}
    tensors["dt_bias"] = dt_bias
    check_step_inputs(op, tensors, "selective_scan")
    check_rank(op, "state", state, (3,), "(batch, dim, dstate)")
    batch, dim, dstate = state.shape
    if state.dtype != torch.float32 and state.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{op} (triton): state has dtype {state.dtype}")
    for name, t in (("x", x), ("dt", dt), ("z", z)):
        check_shape(op, name, t, (batch, dim))
    check_shape(op, "A", A, (dim, dstate))
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        check_shape(op, name, t, (dim,))
    B3, C3 = (B, C) if B.dim() == 3 else (B.unsqueeze(1), C.unsqueeze(1))
    groups = B3.shape[1]
    for name, t in (("B", B3), ("C", C3)):
        check_shape(op, name, t, (batch, groups, dstate))
    if dim % groups:
        raise ValueError(f"{op} (triton): B has {groups} groups, which do not divide dim={dim}")

    D, dt_bias = (t.contiguous() if t is not None else None for t in (D, dt_bias))  # dense reads
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    block_d = _block_d(LaunchConfig(block_d=16, chunk=1, warps=4), dim // groups)
    grid = (cdiv(dim, block_d), batch)
    _selective_state_update[grid](
        state, x, dt, A, B3, C3, _or(D, x), _or(z, x), _or(dt_bias, x), y,
        dim, dstate, dim // groups,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B3.stride(), *C3.stride(),
        *_strides(z, 2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus),
        BLOCK_D=block_d, N_PAD=next_pow2(dstate), num_warps=1 if interpreting() else 4,
    )  # fmt: skip
    return y
