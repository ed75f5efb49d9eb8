"""Depthwise causal convolution in Triton, fused with its silu, forward and backward.

Per channel d, with filter width w (the newest input meets weight[d, w-1]):

    p_t = Σ_{k<w} weight[d, k] · x_{t-(w-1)+k} + bias[d]       (x_j = 0 for j < 0)
    y_t = silu(p_t)  (or p_t without activation)

Backward, with g_t = ∂L/∂p_t = ∂L/∂y_t · silu'(p_t):

    ∂L/∂x_t = Σ_{k<w} weight[d, k] · g_{t+(w-1)-k}      ∂L/∂weight[d, k] = Σ_{b,t} g_t x_{t-(w-1)+k}
    ∂L/∂bias[d] = Σ_{b,t} g_t

The forward: one program per (batch, block of channels, block of time steps) holds a (time,
channel) tile; the w shifted windows of x are w loads of overlapping tiles, served by the cache,
so x is read from memory about once.

The backward, when channels are innermost (as the Mamba blocks pass x: a slice of the input
projection), is a walk over time (``_causal_conv_bwd_walk``): each program holds ROWS stretches
of steps (a warp each) of BLOCK_D channels and walks every stretch backwards, R steps per
iteration, each step a separate (ROWS, BLOCK_D) tile. Time never crosses threads: a thread keeps
the last w − 1 inputs and gradients g of its channels in registers (loop-carried tuples), so each
x and ∂L/∂y element is loaded once and g computed once per step; only a stretch's last steps,
walked first, recompute g at the w − 1 steps after it. ∂L/∂weight and ∂L/∂bias accumulate per
thread over the stretch and are summed across the warps once per program. (A (time, channel)
tile instead needs its neighbouring steps from other threads: reloads or shuffles, and five
cross-warp sums per tile; that kernel held 195 registers and ran 2.9× slower on an H100.)
With time innermost, a step's channels are far apart and the walk's loads would be 2-byte
gathers; there ``_causal_conv_bwd`` recomputes p over (time, channel) tiles that overlap by a
halo of w − 1 steps (rounded up to 8), shifting g in registers with ``tl.gather``. Both write
their share of ∂L/∂weight and ∂L/∂bias per program (summed afterwards: deterministic).

The decoding step (``causal_conv1d_update``) is one program per (batch, block of channels): it
loads the rolling window shifted by one with the new input appended, writes it back in place and
returns the convolution over it, one launch instead of the reference's cat, copy, product, sum,
bias and silu.

The forward and the walk declare what the strides are multiples of (``stride_alignment``):
Mamba-2's x is a slice of rows 3352 = 8 · 419 elements apart, which Triton's own specialisation
(divisible by 16 or not) would load 2 bytes at a time.

Unlike ``F.conv1d`` (the reference), the kernel reads x in any layout, computes in fp32 and writes
y in x's dtype and layout: the Mamba block's x is a channels-innermost slice of its input
projection, and no copy, cast or padding pass is made around the convolution.
"""

# Triton's JIT builds tuples by concatenation only (no starred unpacking in its Python subset).
# ruff: noqa: RUF005

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from mambaverse.kernels.shared_grad import grad_slot
from mambaverse.kernels.triton_support import (
    CachedLaunch,
    cdiv,
    check_device,
    check_float,
    check_offsets,
    check_step_inputs,
    empty_like_sequence,
    interpreting,
    multiprocessors,
    next_pow2,
    silu_and_grad,
    stride_alignment,
    strided,
)

OP = "causal_conv1d"


def _tiles(x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_D): 64 × 64 when channels are innermost (each step's 64 channels are one
    128-byte row of bf16), 128 steps × 16 channels when time is; the interpreter gets small
    tiles and several of them."""
    if interpreting():
        return 4, 4
    return (64, 64) if x.stride(1) == 1 else (128, 16)


def _backward_tiles_shape(x: torch.Tensor, width: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_D, HALO) of the halo-tile backward: the forward's tiles, overlapping by
    HALO ≥ w − 1 steps (a multiple of 8, so that each program's first step stays 16-byte
    aligned); on the interpreter tiles of 16 steps, so that the tiny tests have several."""
    halo = 8 * cdiv(max(width - 1, 1), 8)
    block_l, block_d = _tiles(x)
    if interpreting():
        block_l = 16
    return max(block_l, 2 * halo), block_d, halo


@triton.jit
def _step_tile(base_p, t, mask_d, seqlen, s_l, ALIGN_L: tl.constexpr):
    """The tile at step t of each row ((n,) steps, a (n, BLOCK_D) tile), zero outside
    [0, seqlen), in the tensor's dtype; base_p is the (1, BLOCK_D) row of pointers at step 0."""
    mask = ((t >= 0) & (t < seqlen))[:, None] & mask_d[None, :]
    return tl.load(base_p + strided(t, s_l, ALIGN_L, 0), mask=mask, other=0.0)


@triton.jit
def _preactivation(x_p, w_p, bias, offs_t, mask_d, seqlen, s_x_l, s_w_k, W: tl.constexpr,
                   ALIGN_L: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """p at steps offs_t, (BLOCK_L, BLOCK_D) in fp32; zero-padded on the left."""
    p = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(W):
        x = _step_tile(x_p, offs_t - (W - 1) + k, mask_d, seqlen, s_x_l, ALIGN_L).to(tl.float32)
        p += x * tl.load(w_p + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    return p


@CachedLaunch
@triton.jit
def _causal_conv_fwd(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    dim, seqlen,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_y_b, s_y_d, s_y_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr,
    ALIGN_B: tl.constexpr, ALIGN_D: tl.constexpr, ALIGN_L: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """y in the layout of y_ptr; the ALIGN_* declare what every (b, d, l) stride of x and y is
    a multiple of, per axis (`stride_alignment`), so that rows load as 16-byte vectors."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_p = x_ptr + strided(pid_b, s_x_b, ALIGN_B, 0) + strided(offs_d, s_x_d, ALIGN_D, 1)
    p = _preactivation(x_p, w_ptr + offs_d * s_w_d, bias, offs_t, mask_d, seqlen, s_x_l, s_w_k,
                       W, ALIGN_L, BLOCK_L, BLOCK_D)  # fmt: skip
    if SILU:
        p, _ = silu_and_grad(p)
    y_p = (y_ptr + strided(pid_b, s_y_b, ALIGN_B, 0) + strided(offs_d, s_y_d, ALIGN_D, 1)
           + strided(offs_t, s_y_l, ALIGN_L, 0))  # fmt: skip
    tl.store(y_p, p.to(y_ptr.dtype.element_ty), mask=(offs_t < seqlen)[:, None] & mask_d[None, :])


@CachedLaunch
@triton.jit
def _causal_conv_bwd(
    x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr,
    dim, seqlen,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_dy_b, s_dy_d, s_dy_l, s_dx_b, s_dx_d, s_dx_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr,
    HALO: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """dx in x's layout; this program's ∂L/∂weight, ∂L/∂bias in row (b, time tile) of dw
    (rows, d, W_PAD) and dbias (rows, d). Time tiles overlap by HALO ≥ w − 1 steps: a program's
    tile holds steps [t0, t0 + BLOCK_L), t0 = pid · (BLOCK_L − HALO), and writes ∂L/∂x at the
    first BLOCK_L − HALO of them, each needing g up to w − 1 steps later: g is computed once per
    step of the tile and shifted in registers by ``tl.gather`` (instead of p recomputed at w
    shifts from w loads each)."""
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    steps = tl.arange(0, BLOCK_L)
    offs_t = pid_t * (BLOCK_L - HALO) + steps
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, W_PAD)
    mask_d = offs_d < dim
    in_seq = (offs_t < seqlen)[:, None] & mask_d[None, :]
    owned = (steps < BLOCK_L - HALO)[:, None] & in_seq
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    x_p = x_ptr + pid_b * s_x_b + offs_d[None, :] * s_x_d
    w_p = w_ptr + offs_d * s_w_d

    # g = ∂L/∂p at every step of the tile (zero past the end)
    dy_p = dy_ptr + pid_b * s_dy_b + offs_d[None, :] * s_dy_d + offs_t[:, None] * s_dy_l
    g = tl.load(dy_p, mask=in_seq, other=0.0).to(tl.float32)
    if SILU:
        # No alignment hint: this kernel serves only x or ∂L/∂y with time innermost (the walk
        # takes the Mamba blocks' channels-innermost layout, where the hint matters).
        p = _preactivation(x_p, w_p, bias, offs_t, mask_d, seqlen, s_x_l, s_w_k,
                           W, 1, BLOCK_L, BLOCK_D)  # fmt: skip
        _, dsilu = silu_and_grad(p)
        g = g * dsilu

    # ∂L/∂x_t = Σ_q weight[q] · g_{t + w - 1 - q}
    dx = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for q in tl.static_range(W):
        ahead = W - 1 - q
        if ahead == 0:
            later = g
        else:
            index = tl.broadcast_to(tl.minimum(steps + ahead, BLOCK_L - 1)[:, None],
                                    (BLOCK_L, BLOCK_D))  # fmt: skip
            later = tl.gather(g, index, 0)  # wrong only in the halo, which is not written
        w_q = tl.load(w_p + q * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
        dx += later * w_q[None, :]
    dx_p = dx_ptr + pid_b * s_dx_b + offs_d[None, :] * s_dx_d + offs_t[:, None] * s_dx_l
    tl.store(dx_p, dx.to(dx_ptr.dtype.element_ty), mask=owned)

    # This program's share of ∂L/∂weight and ∂L/∂bias, over the steps it owns.
    g = tl.where(owned, g, 0.0)
    dw = tl.zeros((BLOCK_D, W_PAD), dtype=tl.float32)
    for k in tl.static_range(W):
        tk = offs_t - (W - 1) + k
        mask_k = (tk >= 0)[:, None] & (tk < seqlen)[:, None] & mask_d[None, :]
        x = tl.load(x_p + tk[:, None] * s_x_l, mask=mask_k, other=0.0).to(tl.float32)
        dw += tl.where(offs_k[None, :] == k, tl.sum(g * x, axis=0)[:, None], 0.0)
    row = pid_b * tl.num_programs(0) + pid_t
    mask_dw = mask_d[:, None] & (offs_k < W)[None, :]
    tl.store(dw_ptr + (row * dim + offs_d[:, None]) * W_PAD + offs_k[None, :], dw, mask=mask_dw)
    tl.store(dbias_ptr + row * dim + offs_d, tl.sum(g, axis=0), mask=mask_d)


@triton.jit
def _grad_p(xs, first: tl.constexpr, dy, ws, bias, SILU: tl.constexpr, W: tl.constexpr,
            FAST: tl.constexpr):  # fmt: skip
    """g = ∂L/∂p at one step, from ∂L/∂y there and x at the w steps ending there (xs[first],
    ..., xs[first + w − 1], oldest first). FAST (compiled only: the interpreter has no
    libdevice): silu'(p) = σ(p) · (1 + p · (1 − σ(p))) with σ from the approximate exp and
    reciprocal (~2 ulp), without the range fix-ups of `tl.sigmoid` (a quarter of the walk's
    instructions)."""
    g = dy.to(tl.float32)
    if SILU:
        p = bias
        for k in tl.static_range(W):
            p = p + ws[k] * xs[first + k]
        if FAST:
            sig = libdevice.fast_dividef(1.0, 1.0 + libdevice.fast_expf(-p))
            g = g * sig * (1.0 + p * (1.0 - sig))
        else:
            _, dsilu = silu_and_grad(p)
            g = g * dsilu
    return g


@CachedLaunch
@triton.jit
def _causal_conv_bwd_walk(
    x_ptr, w_ptr, bias_ptr, dy_ptr, dx_ptr, dw_ptr, dbias_ptr,
    dim, seqlen,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_dy_b, s_dy_d, s_dy_l, s_dx_b, s_dx_d, s_dx_l,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr,
    ALIGN_B: tl.constexpr, ALIGN_D: tl.constexpr, ALIGN_L: tl.constexpr,
    R: tl.constexpr, CHUNKS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    FAST: tl.constexpr,
):  # fmt: skip
    """dx in dx_ptr's layout; this program's ∂L/∂weight in row pid of dw (programs, d, W) and
    ∂L/∂bias in row pid of dbias (programs, d), pid = (b, time block). Row j of the tile owns
    the R · CHUNKS steps before end_j = (pid_t · ROWS + j + 1) · R · CHUNKS and walks them
    backwards, R steps per iteration. ALIGN_*: what the (b, d, l) strides of x, ∂L/∂y and dx are
    multiples of, per axis (`stride_alignment`)."""
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    end = (pid_t * ROWS + tl.arange(0, ROWS) + 1) * (R * CHUNKS)  # (ROWS,)
    x_p = x_ptr + strided(pid_b, s_x_b, ALIGN_B, 0) + strided(offs_d, s_x_d, ALIGN_D, 1)
    dy_p = dy_ptr + strided(pid_b, s_dy_b, ALIGN_B, 0) + strided(offs_d, s_dy_d, ALIGN_D, 1)
    dx_p = dx_ptr + strided(pid_b, s_dx_b, ALIGN_B, 0) + strided(offs_d, s_dx_d, ALIGN_D, 1)

    # Per-channel constants as (1, BLOCK_D) rows, broadcast over the tile's rows.
    ws = ()
    for k in tl.static_range(W):
        w_k = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0)
        ws = ws + (w_k.to(tl.float32)[None, :],)
    bias = tl.zeros((1, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]

    # The windows carried into each row's last step: x at [end − (w − 1), end), and g at
    # [end, end + w − 1), the next row's first steps, recomputed here from x at
    # [end − (w − 1), end + w − 1); past the sequence ∂L/∂y loads as 0, so g is 0 there.
    x_end = ()
    for m in tl.static_range(2 * W - 2):
        x_m = _step_tile(x_p, end - (W - 1) + m, mask_d, seqlen, s_x_l, ALIGN_L)
        x_end = x_end + (x_m.to(tl.float32),)
    x_win = ()
    g_win = ()
    for m in tl.static_range(W - 1):
        x_win = x_win + (x_end[m],)
        dy_end = _step_tile(dy_p, end + m, mask_d, seqlen, s_dy_l, ALIGN_L)
        g_win = g_win + (_grad_p(x_end, m, dy_end, ws, bias, SILU, W, FAST),)

    dws = ()
    for _ in tl.static_range(W):
        dws = dws + (tl.zeros((ROWS, BLOCK_D), dtype=tl.float32),)
    dbias = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for i in tl.range(0, CHUNKS, num_stages=1):  # the R unrolled steps' loads are independent
        # Before step t, x_win holds x at [t − w + 2, t] and g_win g at [t + 1, t + w − 1],
        # oldest first: step t loads x_{t−w+1} and ∂L/∂y_t, and drops the newest of each.
        c = end - (i + 1) * R
        for j in tl.static_range(R):
            t = c + (R - 1 - j)
            x_new = _step_tile(x_p, t - (W - 1), mask_d, seqlen, s_x_l, ALIGN_L).to(tl.float32)
            xs = (x_new,) + x_win
            dy = _step_tile(dy_p, t, mask_d, seqlen, s_dy_l, ALIGN_L)
            gs = (_grad_p(xs, 0, dy, ws, bias, SILU, W, FAST),) + g_win
            # ∂L/∂x_t = Σ_k weight[k] · g_{t+(w−1)−k}
            dx = ws[0] * gs[W - 1]
            for k in tl.static_range(1, W):
                dx += ws[k] * gs[W - 1 - k]
            tl.store(dx_p + strided(t, s_dx_l, ALIGN_L, 0), dx.to(dx_ptr.dtype.element_ty),
                     mask=(t < seqlen)[:, None] & mask_d[None, :])  # fmt: skip
            # ∂L/∂weight[k] += g_t · x_{t−(w−1)+k}
            grown = ()
            for k in tl.static_range(W):
                grown = grown + (dws[k] + gs[0] * xs[k],)
            dws = grown
            dbias += gs[0]
            x_win = ()
            g_win = ()
            for m in tl.static_range(W - 1):
                x_win = x_win + (xs[m],)
                g_win = g_win + (gs[m],)

    row = pid_b * tl.num_programs(0) + pid_t
    for k in tl.static_range(W):
        tl.store(dw_ptr + (row * dim + offs_d) * W + k, tl.sum(dws[k], axis=0), mask=mask_d)
    tl.store(dbias_ptr + row * dim + offs_d, tl.sum(dbias, axis=0), mask=mask_d)


@CachedLaunch
@triton.jit
def _causal_conv_update(
    state_ptr, x_ptr, w_ptr, bias_ptr, y_ptr,
    dim,
    s_st_b, s_st_d, s_st_k, s_x_b, s_x_d, s_w_d, s_w_k, s_y_b, s_y_d,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr, W_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, W_PAD)
    mask_d = offs_d < dim
    mask = mask_d[:, None] & (offs_k < W)[None, :]
    st_p = state_ptr + pid_b * s_st_b + offs_d[:, None] * s_st_d
    # The new window (BLOCK_D, W_PAD): slots 1 .. w-1 of the old one, then x (in the state's
    # dtype, as it is stored).
    shifted = tl.load(
        st_p + (offs_k[None, :] + 1) * s_st_k, mask=mask & (offs_k < W - 1)[None, :], other=0.0
    )  # zeros in the padding slots k >= w, whose weights are zero too
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)
    x = x.to(state_ptr.dtype.element_ty)
    window = tl.where((offs_k == W - 1)[None, :], x[:, None], shifted)
    w = tl.load(w_ptr + offs_d[:, None] * s_w_d + offs_k[None, :] * s_w_k, mask=mask, other=0.0)
    p = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        p += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        p, _ = silu_and_grad(p)
    # Another thread of this program may hold the slot this one read: every read of the old
    # window is done before any slot is overwritten.
    tl.debug_barrier()
    tl.store(st_p + offs_k[None, :] * s_st_k, window, mask=mask)
    tl.store(y_ptr + pid_b * s_y_b + offs_d * s_y_d, p.to(y_ptr.dtype.element_ty), mask=mask_d)


def _alignments(*tensors: torch.Tensor) -> dict[str, int]:
    """ALIGN_B, ALIGN_D, ALIGN_L: per axis, what every (b, d, l) tensor's stride is a multiple of."""
    return {
        f"ALIGN_{axis}": stride_alignment(*(t.stride(i) for t in tensors))
        for i, axis in enumerate("BDL")
    }


def _grid(x: torch.Tensor) -> tuple[tuple[int, int, int], int, int]:
    batch, dim, seqlen = x.shape
    block_l, block_d = _tiles(x)
    return (cdiv(seqlen, block_l), cdiv(dim, block_d), batch), block_l, block_d


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu: bool):
        dim, width = weight.shape
        y = empty_like_sequence(x)
        grid, block_l, block_d = _grid(x)
        _causal_conv_fwd[grid](
            x, weight, bias if bias is not None else weight, y,
            dim, x.shape[2],
            *x.stride(), *weight.stride(), *y.stride(),
            HAS_BIAS=bias is not None, SILU=silu, W=width, **_alignments(x, y),
            BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx = grad_slot(x)  # in Mamba-2, x's slot of in_proj's gradient
        if dx is None:
            dx = empty_like_sequence(x)
        if x.stride(1) == 1 and dy.stride(1) == 1:
            dw, dbias = _backward_walk(x, weight, bias, dy, dx, ctx.silu)
        else:
            dw, dbias = _backward_tiles(x, weight, bias, dy, dx, ctx.silu)
        dweight = dw.sum(0)[:, : weight.shape[1]].to(weight.dtype)
        dbias_out = dbias.sum(0).to(bias.dtype) if bias is not None else None
        return dx, dweight, dbias_out, None


def _walk_tiles(x: torch.Tensor) -> dict[str, int]:
    """The walk's tiles: ROWS stretches of R · CHUNKS steps of BLOCK_D channels per program.

    GPU: 4 rows × 128 channels over 4 warps (a warp per row: 4 channels, 8 bytes of bf16, per
    thread and load), 4 steps per iteration (126 registers in a local Triton 3.6 compile: four
    programs per SM). Each row walks 128, 64, 32 or 16 steps: the longest that still gives ≥ 8
    programs per SM (Mamba-2-130m at b=8, l=2048: 32), since a row's w − 1 recomputed steps are
    ~10 % of a 32-step stretch at w = 4. The interpreter: tiny tiles, several of everything."""
    if interpreting():
        return {"R": 2, "CHUNKS": 2, "ROWS": 2, "BLOCK_D": 4, "FAST": False, "num_warps": 1}
    batch, dim, seqlen = x.shape
    rows, block_d, steps = 4, 128, 4
    blocks = batch * cdiv(dim, block_d)
    target = 8 * multiprocessors(x.device)
    stretch = 128
    while stretch > 16 and blocks * cdiv(seqlen, rows * stretch) < target:
        stretch //= 2
    return {"R": steps, "CHUNKS": stretch // steps, "ROWS": rows, "BLOCK_D": block_d,
            "FAST": True, "num_warps": 4}  # fmt: skip


def _backward_walk(x, weight, bias, dy, dx, silu: bool, tiles: dict[str, int] | None = None):
    """The walk (channels innermost); (dw, dbias) partial sums per program, fp32."""
    tiles = tiles or _walk_tiles(x)
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    steps_per_program = tiles["ROWS"] * tiles["R"] * tiles["CHUNKS"]
    grid = (cdiv(seqlen, steps_per_program), cdiv(dim, tiles["BLOCK_D"]), batch)
    f32 = {"device": x.device, "dtype": torch.float32}
    dw = torch.empty((grid[0] * batch, dim, width), **f32)
    dbias = torch.empty((grid[0] * batch, dim), **f32)
    _causal_conv_bwd_walk[grid](
        x, weight, bias if bias is not None else weight, dy, dx, dw, dbias,
        dim, seqlen,
        *x.stride(), *weight.stride(), *dy.stride(), *dx.stride(),
        HAS_BIAS=bias is not None, SILU=silu, W=width, **_alignments(x, dy, dx), **tiles,
    )  # fmt: skip
    return dw, dbias


def _backward_tiles(x, weight, bias, dy, dx, silu: bool):
    """The halo tiles (time innermost); (dw, dbias) partial sums per program, fp32."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    block_l, block_d, halo = _backward_tiles_shape(x, width)
    grid = (cdiv(seqlen, block_l - halo), cdiv(dim, block_d), batch)
    w_pad = next_pow2(width)
    rows = grid[0] * grid[2]
    f32 = {"device": x.device, "dtype": torch.float32}
    dw = torch.empty((rows, dim, w_pad), **f32)
    dbias = torch.empty((rows, dim), **f32)
    _causal_conv_bwd[grid](
        x, weight, bias if bias is not None else weight, dy, dx, dw, dbias,
        dim, seqlen,
        *x.stride(), *weight.stride(), *dy.stride(), *dx.stride(),
        HAS_BIAS=bias is not None, SILU=silu, W=width, W_PAD=w_pad, HALO=halo,
        BLOCK_L=block_l, BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip
    return dw, dbias


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.causal_conv1d` (see there); y has x's
    layout. Shapes are checked by the public function."""
    check_device(OP, {"x": x, "weight": weight, "bias": bias})
    check_float(OP, {"x": x, "weight": weight, "bias": bias})
    check_offsets(OP, {"x": x}, "Use impl='reference', or convolve the sequence in pieces.")
    if bias is not None:
        bias = bias.contiguous()  # the kernels index it densely; x and weight take any strides
    return _CausalConv1dFn.apply(x, weight, bias, activation in ("silu", "swish"))


def causal_conv1d_update(
    conv_state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.causal_conv1d_update` (see there):
    ``conv_state`` (b, d, w) updated in place, y (b, d) returned in x's dtype. For generation
    only: it records no gradient. Shapes are checked by the public function. Each program owns
    its rows of the window, so ``conv_state`` must not overlap itself (an ``expand``-ed tensor)
    and x must not alias another row's window."""
    op = "causal_conv1d_update"
    tensors = {"conv_state": conv_state, "x": x, "weight": weight, "bias": bias}
    check_step_inputs(op, tensors, "causal_conv1d")
    if bias is not None:
        bias = bias.contiguous()  # indexed densely
    batch, dim = x.shape
    width = weight.shape[1]
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    block_d = 4 if interpreting() else 128
    _causal_conv_update[(cdiv(dim, block_d), batch)](
        conv_state, x, weight, bias if bias is not None else weight, y,
        dim,
        *conv_state.stride(), *x.stride(), *weight.stride(), *y.stride(),
        HAS_BIAS=bias is not None, SILU=activation in ("silu", "swish"), W=width,
        W_PAD=next_pow2(width), BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip
    return y
