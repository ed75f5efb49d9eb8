"""Gathering tokens into walks and merging walks back, in Triton, forward and backward.

With tokens x (b, c, l) and a walk plan — order (k, s), inverse (k, l), see
:func:`mambaverse.kernels.gather_walks` —

    walks[b, j, c, t] = x[b, c, order[j, t]]                  (0 at padding steps)
    out[b, c, i]      = scale · Σ_j y[b, j, c, inverse[j, i]]   (· silu(gate[b, c, i]))

Each program moves a (rows, steps) tile, a row being one (batch, channel) pair: it loads the
tile's indices once and reads the rows at them (a row of a few thousand tokens stays in the
cache while its tile is read), so each tensor crosses memory once. ``torch.gather`` with the
index broadcast over (b, c) does the same work reading an int64 index per element, and the
merge then needs a sum over the walks and the gate's silu and product as three more passes.

Because every walk visits every token exactly once, each op's adjoint is the other: the
gradient of gathering is merging with scale 1 (the padding steps, which read no token, send no
gradient), and the gradient of merging stores each token's gradient, scaled (and multiplied by
silu(gate)), at its step in every walk — one pass that also gives the gate's gradient.

``conv_walks`` (the causal convolution in front of each walk's scan) reads the tokens in each
walk's order, ``x[order[j, t]]``, and convolves them in registers instead of writing the gathered
copy for a second kernel: without a gradient the walks are never written. With one it is
gather_walks then causal_conv1d, each with its autograd (the convolution's backward needs the
walks it read).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambaverse.kernels.causal_conv1d.triton import causal_conv1d
from mambaverse.kernels.triton_support import (
    CachedLaunch,
    cdiv,
    check_device,
    check_float,
    interpreting,
    records_gradient,
    silu_and_grad,
)


def _programs(rows: int, length: int) -> tuple[int, int, int]:
    """(programs along grid axis 0, BLOCK_R rows, BLOCK_T steps) for ``rows`` rows of ``length``
    steps or tokens; the interpreter gets small ragged tiles."""
    block_r, block_t = (2, 8) if interpreting() else (4, 512)
    return cdiv(rows, block_r) * cdiv(length, block_t), block_r, block_t


@triton.jit
def _tile(rows, channels, length, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
          HALO: tl.constexpr):  # fmt: skip
    """This program's tile: batch b and channel c of its rows (int64), its steps t (from
    HALO steps before 0 on, step tiles overlapping by HALO), row < rows and t < length. Grid
    axis 0 counts step tiles fastest: one axis, without CUDA's 65535 limit on the others
    (batch × channels rows reach hundreds of thousands), in the order that measured fastest (a
    row's tiles one after another)."""
    stride = BLOCK_T - HALO
    tiles = tl.cdiv(length, stride)
    pid = tl.program_id(0)
    row = (pid // tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    t = (pid % tiles) * stride - HALO + tl.arange(0, BLOCK_T)
    b, c = (row // channels).to(tl.int64), (row % channels).to(tl.int64)
    return b, c, t, row < rows, t < length


@CachedLaunch
@triton.jit
def _gather_walks(x_p, order_p, out_p, rows, channels, tokens, steps,
                  s_xb, s_xc, s_xl, s_ok, s_ot,
                  BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """out (b, k, c, s) contiguous; grid (row tiles × step tiles, k), see _tile."""
    walk = tl.program_id(1)
    num_walks = tl.num_programs(1)
    b, c, t, mask_r, mask_t = _tile(rows, channels, steps, BLOCK_R, BLOCK_T, 0)
    idx = tl.load(order_p + walk * s_ok + t * s_ot, mask=mask_t, other=tokens)
    src = x_p + (b * s_xb + c * s_xc)[:, None] + idx[None, :].to(tl.int64) * s_xl
    value = tl.load(src, mask=mask_r[:, None] & (idx < tokens)[None, :], other=0.0)
    dst = out_p + (((b * num_walks + walk) * channels + c) * steps)[:, None] + t[None, :]
    tl.store(dst, value, mask=mask_r[:, None] & mask_t[None, :])


@CachedLaunch
@triton.jit
def _conv_walks(x_p, order_p, w_p, bias_p, out_p, rows, channels, tokens, steps,
                s_xb, s_xc, s_xl, s_ok, s_ot, s_wd, s_wk,
                HAS_BIAS: tl.constexpr, SILU: tl.constexpr, W: tl.constexpr, HALO: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """out (b, k, c, s) contiguous: walk j's channel c convolved with filter row j·c + c; grid
    (row tiles × step tiles, k). Step tiles overlap by HALO ≥ w - 1 steps: a program reads the
    tokens of steps [t0 - HALO, t0 - HALO + BLOCK_T) once (one gathered load per element) and
    writes the convolution at the last BLOCK_T - HALO of them, each window's earlier steps taken
    from the loaded tile by ``tl.gather`` (H100: 1.5x faster than w gathered loads per step, see
    docs/benchmarks.md, run S10). HALO is a multiple of 8, so each row's writes stay 16-byte
    aligned."""
    walk = tl.program_id(1)
    num_walks = tl.num_programs(1)
    b, c, t, mask_r, in_walk = _tile(rows, channels, steps, BLOCK_R, BLOCK_T, HALO)
    j = tl.arange(0, BLOCK_T)
    filt = walk * channels + c  # the stacked channel: this walk's filters
    src = x_p + (b * s_xb + c * s_xc)[:, None]
    # steps before 0 read the padding token: zero
    idx = tl.load(order_p + walk * s_ok + t * s_ot, mask=(t >= 0) & in_walk, other=tokens)
    walked = tl.load(src + idx[None, :].to(tl.int64) * s_xl,
                     mask=mask_r[:, None] & (idx < tokens)[None, :], other=0.0).to(tl.float32)  # fmt: skip
    acc = tl.zeros((BLOCK_R, BLOCK_T), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_p + filt, mask=mask_r, other=0.0).to(tl.float32)[:, None]
    for q in tl.static_range(W):
        back = W - 1 - q  # tap q meets the step `back` steps earlier
        if back == 0:
            window = walked
        else:
            earlier = tl.broadcast_to(tl.maximum(j - back, 0)[None, :], (BLOCK_R, BLOCK_T))
            window = tl.gather(walked, earlier, 1)  # wrong only at j < back, which is not written
        tap = tl.load(w_p + filt * s_wd + q * s_wk, mask=mask_r, other=0.0).to(tl.float32)
        acc += window * tap[:, None]
    if SILU:
        acc, _ = silu_and_grad(acc)
    dst = out_p + (((b * num_walks + walk) * channels + c) * steps)[:, None] + t[None, :]
    mask_t = (j >= HALO) & in_walk
    tl.store(dst, acc.to(out_p.dtype.element_ty), mask=mask_r[:, None] & mask_t[None, :])


@CachedLaunch
@triton.jit
def _merge_walks(y_p, inverse_p, gate_p, out_p, merged_p, rows, channels, tokens, scale,
                 s_yb, s_yk, s_yc, s_yt, s_ik, s_it, s_gb, s_gc, s_gl, s_ob, s_oc, s_ol,
                 WALKS: tl.constexpr, GATED: tl.constexpr, STORE_MERGED: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """out (b, c, l), and with STORE_MERGED the sum before the gate in ``merged_p`` (fp32, out's
    strides); grid (row tiles × token tiles,), see _tile."""
    b, c, i, mask_r, mask_i = _tile(rows, channels, tokens, BLOCK_R, BLOCK_T, 0)
    mask = mask_r[:, None] & mask_i[None, :]
    total = tl.zeros((BLOCK_R, BLOCK_T), dtype=tl.float32)
    for walk in tl.static_range(WALKS):
        step = tl.load(inverse_p + walk * s_ik + i * s_it, mask=mask_i, other=0).to(tl.int64)
        src = y_p + (b * s_yb + walk * s_yk.to(tl.int64) + c * s_yc)[:, None] + step[None, :] * s_yt
        total += tl.load(src, mask=mask, other=0.0).to(tl.float32)
    total *= scale
    out_offset = (b * s_ob + c * s_oc)[:, None] + i[None, :].to(tl.int64) * s_ol
    if STORE_MERGED:
        tl.store(merged_p + out_offset, total, mask=mask)
    if GATED:
        gate_offset = (b * s_gb + c * s_gc)[:, None] + i[None, :].to(tl.int64) * s_gl
        gate = tl.load(gate_p + gate_offset, mask=mask, other=0.0).to(tl.float32)
        total *= gate * tl.sigmoid(gate)
    tl.store(out_p + out_offset, total.to(out_p.dtype.element_ty), mask=mask)


@CachedLaunch
@triton.jit
def _scatter_walks(g_p, gate_p, merged_p, inverse_p, dy_p, dgate_p,
                   rows, channels, tokens, steps, scale,
                   s_gb, s_gc, s_gl, s_zb, s_zc, s_zl, s_mb, s_mc, s_ml, s_ik, s_it,
                   WALKS: tl.constexpr, GATED: tl.constexpr, GATE_GRAD: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):  # fmt: skip
    """merge_walks' backward, per (rows, tokens) tile: v = scale · g · silu(gate) stored at every
    walk's step of each token, dy[b, j, c, inverse[j, i]] = v (dy contiguous (b, k, c, s)); with
    GATE_GRAD also dgate = g · merged · silu'(gate) (dgate has merged's strides); grid (row
    tiles × token tiles,), see _tile."""
    b, c, i, mask_r, mask_i = _tile(rows, channels, tokens, BLOCK_R, BLOCK_T, 0)
    mask = mask_r[:, None] & mask_i[None, :]
    i64 = i[None, :].to(tl.int64)
    value = tl.load(g_p + (b * s_gb + c * s_gc)[:, None] + i64 * s_gl, mask=mask, other=0.0)
    value = value.to(tl.float32)
    if GATED:
        gate_offset = (b * s_zb + c * s_zc)[:, None] + i64 * s_zl
        gate = tl.load(gate_p + gate_offset, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(gate)
        if GATE_GRAD:
            merged_offset = (b * s_mb + c * s_mc)[:, None] + i64 * s_ml
            merged = tl.load(merged_p + merged_offset, mask=mask, other=0.0)
            dgate = value * merged * sig * (1.0 + gate * (1.0 - sig))
            tl.store(dgate_p + merged_offset, dgate.to(dgate_p.dtype.element_ty), mask=mask)
        value *= gate * sig
    value = (value * scale).to(dy_p.dtype.element_ty)
    for walk in tl.static_range(WALKS):
        step = tl.load(inverse_p + walk * s_ik + i * s_it, mask=mask_i, other=0).to(tl.int64)
        dst = dy_p + (((b * WALKS + walk) * channels + c) * steps)[:, None] + step[None, :]
        tl.store(dst, value, mask=mask)


def _outermost(t: torch.Tensor) -> bool:
    """Whether (b, c, l) ``t`` is stored channels-outermost, (c, b, l) in memory: the layout of
    the vision mixers' projections, which then need no copy."""
    return t.shape[0] > 1 and t.transpose(0, 1).is_contiguous()


def _empty_tokens(outermost: bool, shape: tuple[int, ...], y: torch.Tensor) -> torch.Tensor:
    """An empty (b, c, l) tensor on y's device in y's dtype, stored channels-outermost when
    ``outermost``, else contiguous."""
    batch, channels, tokens = shape
    if outermost:
        return torch.empty((channels, batch, tokens), device=y.device, dtype=y.dtype).transpose(
            0, 1
        )
    return torch.empty(shape, device=y.device, dtype=y.dtype)


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    batch, channels, tokens = x.shape
    walks, steps = order.shape
    out = torch.empty((batch, walks, channels, steps), device=x.device, dtype=x.dtype)
    rows = batch * channels
    programs, block_r, block_t = _programs(rows, steps)
    _gather_walks[(programs, walks)](
        x, order, out, rows, channels, tokens, steps, *x.stride(), *order.stride(),
        BLOCK_R=block_r, BLOCK_T=block_t, num_warps=4,
    )  # fmt: skip
    return out


def _merge(
    y: torch.Tensor,
    inverse: torch.Tensor,
    scale: float,
    gate: torch.Tensor | None,
    outermost: bool,
    store_merged: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out, the fp32 sum before the gate when ``store_merged``); out channels-outermost when
    ``outermost``."""
    batch, walks, channels, _ = y.shape
    tokens = inverse.shape[1]
    out = _empty_tokens(outermost, (batch, channels, tokens), y)
    f32 = {"device": y.device, "dtype": torch.float32}
    merged = torch.empty_strided(out.shape, out.stride(), **f32) if store_merged else out
    gate_strides = gate.stride() if gate is not None else (0, 0, 0)
    rows = batch * channels
    programs, block_r, block_t = _programs(rows, tokens)
    _merge_walks[(programs,)](
        y, inverse, gate if gate is not None else y, out, merged, rows, channels, tokens, scale,
        *y.stride(), *inverse.stride(), *gate_strides, *out.stride(),
        WALKS=walks, GATED=gate is not None, STORE_MERGED=store_merged,
        BLOCK_R=block_r, BLOCK_T=block_t, num_warps=4,
    )  # fmt: skip
    return out, merged if store_merged else None


class _GatherWalksFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        ctx.x_outermost = _outermost(x)  # x's gradient is stored as x
        return _gather(x, order)

    @staticmethod
    def backward(ctx, grad_walks):
        (inverse,) = ctx.saved_tensors
        grad_x, _ = _merge(grad_walks, inverse, 1.0, None, outermost=ctx.x_outermost)
        return grad_x, None, None


class _MergeWalksFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, inverse, scale, gate):
        gate_grad = gate is not None and ctx.needs_input_grad[3]
        outermost = _outermost(gate) if gate is not None else False
        out, merged = _merge(y, inverse, scale, gate, outermost, store_merged=gate_grad)
        ctx.save_for_backward(inverse, gate, merged)
        ctx.scale, ctx.y_shape = scale, y.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        inverse, gate, merged = ctx.saved_tensors
        batch, walks, channels, steps = ctx.y_shape
        tokens = inverse.shape[1]
        grad_y = torch.empty(ctx.y_shape, device=grad_out.device, dtype=grad_out.dtype)
        grad_y[..., tokens:].zero_()  # padding steps: never merged, no gradient
        grad_gate = None
        if merged is not None:
            grad_gate = torch.empty_strided(merged.shape, merged.stride(), dtype=gate.dtype,
                                            device=gate.device)  # fmt: skip
        gate_strides = gate.stride() if gate is not None else (0, 0, 0)
        merged_strides = merged.stride() if merged is not None else (0, 0, 0)
        rows = batch * channels
        programs, block_r, block_t = _programs(rows, tokens)
        _scatter_walks[(programs,)](
            grad_out, gate if gate is not None else grad_out,
            merged if merged is not None else grad_out, inverse, grad_y,
            grad_gate if grad_gate is not None else grad_y,
            rows, channels, tokens, steps, ctx.scale,
            *grad_out.stride(), *gate_strides, *merged_strides, *inverse.stride(),
            WALKS=walks, GATED=gate is not None, GATE_GRAD=merged is not None,
            BLOCK_R=block_r, BLOCK_T=block_t, num_warps=4,
        )  # fmt: skip
        return grad_y, None, None, grad_gate


def gather_walks(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.gather_walks` (see there); shapes are
    checked by the public function."""
    check_device("gather_walks", {"x": x, "order": order, "inverse": inverse})
    check_float("gather_walks", {"x": x})
    return _GatherWalksFn.apply(x, order, inverse)


def merge_walks(
    y: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    scale: float = 1.0,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.merge_walks` (see there); out is
    stored like ``gate`` (channels-outermost in the vision mixers) when given."""
    tensors = {"y": y, "order": order, "inverse": inverse, "gate": gate}
    check_device("merge_walks", tensors)
    check_float("merge_walks", {"y": y, "gate": gate})
    return _MergeWalksFn.apply(y, inverse, float(scale), gate)


def conv_walks(
    x: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.conv_walks` (see there); shapes are
    checked by the public function."""
    tensors = {"x": x, "order": order, "inverse": inverse, "weight": weight, "bias": bias}
    check_device("conv_walks", tensors)
    check_float("conv_walks", {"x": x, "weight": weight, "bias": bias})
    if records_gradient(x, weight, bias):
        walks = gather_walks(x, order, inverse)  # (b, k, c, s)
        return causal_conv1d(walks.flatten(1, 2), weight, bias, activation).view(walks.shape)
    if bias is not None:
        bias = bias.contiguous()  # indexed densely
    batch, channels, tokens = x.shape
    (walks, steps), width = order.shape, weight.shape[1]
    out = torch.empty((batch, walks, channels, steps), device=x.device, dtype=x.dtype)
    rows = batch * channels
    halo = 8 * cdiv(width - 1, 8)  # w - 1 earlier steps, rounded up to 16 bytes of bf16
    # 8 rows × 256 steps, 4 warps: the best of eight tiles at Vim-Ti's 1024 px shape (H100)
    block_r, block_t = (2, max(16, 2 * halo)) if interpreting() else (8, max(256, 2 * halo))
    programs = cdiv(rows, block_r) * cdiv(steps, block_t - halo)
    _conv_walks[(programs, walks)](
        x, order, weight, bias if bias is not None else weight, out,
        rows, channels, tokens, steps, *x.stride(), *order.stride(), *weight.stride(),
        HAS_BIAS=bias is not None, SILU=activation in ("silu", "swish"), W=width, HALO=halo,
        BLOCK_R=block_r, BLOCK_T=block_t, num_warps=4,
    )  # fmt: skip
    return out
