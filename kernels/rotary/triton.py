"""Rotary embeddings in Triton: one pass over x forward, one over the gradient backward.

The rotation by α is orthogonal, so its backward is the rotation by −α of the gradient:

    ∂L/∂x1 = g1 cos α + g2 sin α        ∂L/∂x2 = g2 cos α − g1 sin α        ∂L/∂x_pass = g_pass

and one kernel does both (SIGN = +1 forward, −1 backward). Unfused, the rotation in float32 is
about fifteen elementwise kernels per tensor each way (casts, four products, the sums, two cats);
here each program loads a (BLOCK_L, head_dim) tile of one head once, computes its angles from
the positions and the frequencies ω (computed once per rotary_dim, θ and device by the
reference's own code, so that the angles are torch's), takes cos and sin through libdevice
(accurate at any angle, as torch's), and writes the rotated tile in x's dtype and layout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from mambaverse.kernels.triton_support import (
    CachedLaunch,
    cdiv,
    check_device,
    check_float,
    interpreting,
    next_pow2,
    records_gradient,
)

from .reference import frequencies

OP = "apply_rotary"
BLOCK_L = 32  # positions per program; the interpreter's 4 give tiny tests several ragged tiles


@CachedLaunch
@triton.jit
def _rotate(x_p, pos_p, freq_p, out_p, heads, seqlen, tiles, s_pos,
            s_xb, s_xh, s_xl, s_ob, s_oh, s_ol,
            ROTARY_DIM: tl.constexpr, PASS: tl.constexpr, SIGN: tl.constexpr,
            HALF_PAD: tl.constexpr, PASS_PAD: tl.constexpr, BLOCK_L: tl.constexpr):  # fmt: skip
    """out (B, heads, L, head_dim) = x rotated by SIGN · α; grid (B · heads · tiles,), tiles of
    BLOCK_L positions (one axis: the second and third are capped at 65535). Channels have unit
    stride in x and out."""
    pid = tl.program_id(0)
    bh = pid // tiles
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    t = (pid % tiles) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_t = t < seqlen
    half: tl.constexpr = ROTARY_DIM // 2
    i = tl.arange(0, HALF_PAD)
    mask = mask_t[:, None] & (i < half)[None, :]
    # α = position · ω_i: (BLOCK_L, HALF_PAD)
    frequency = tl.load(freq_p + i, mask=i < half, other=0.0)
    position = tl.load(pos_p + t.to(tl.int64) * s_pos, mask=mask_t, other=0).to(tl.float32)
    angle = position[:, None] * frequency[None, :]
    cos, sin = tl.cos(angle), tl.sin(angle) * SIGN
    x_row = x_p + b * s_xb + h * s_xh + t[:, None].to(tl.int64) * s_xl
    o_row = out_p + b * s_ob + h * s_oh + t[:, None].to(tl.int64) * s_ol
    x1 = tl.load(x_row + i[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + i[None, :], mask=mask, other=0.0).to(tl.float32)
    dtype = out_p.dtype.element_ty
    tl.store(o_row + i[None, :], (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(o_row + half + i[None, :], (x2 * cos + x1 * sin).to(dtype), mask=mask)
    if PASS > 0:  # the channels after rotary_dim, copied
        j = tl.arange(0, PASS_PAD)
        mask_j = mask_t[:, None] & (j < PASS)[None, :]
        kept = tl.load(x_row + ROTARY_DIM + j[None, :], mask=mask_j, other=0.0)
        tl.store(o_row + ROTARY_DIM + j[None, :], kept.to(dtype), mask=mask_j)


def _rotated(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float,
             sign: float) -> torch.Tensor:  # fmt: skip
    """x (B, heads, L, head_dim) rotated by sign · α, in x's dtype and memory layout."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    batch, heads, seqlen, head_dim = x.shape
    out = torch.empty_like(x)  # x's layout: e.g. (B, L, heads, head_dim) storage stays so
    if out.stride(-1) != 1:  # a layout empty_like does not keep
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    block_l = 4 if interpreting() else BLOCK_L
    kept = head_dim - rotary_dim
    tiles = cdiv(seqlen, block_l)
    _rotate[(batch * heads * tiles,)](
        x, positions, _frequencies(rotary_dim, theta, x.device), out, heads, seqlen, tiles,
        positions.stride(0),
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        ROTARY_DIM=rotary_dim, PASS=kept, SIGN=sign, HALF_PAD=next_pow2(rotary_dim // 2),
        PASS_PAD=next_pow2(kept), BLOCK_L=block_l, num_warps=4 if head_dim >= 64 else 2,
    )  # fmt: skip
    return out


_FREQUENCIES: dict[tuple[int, float, torch.device], torch.Tensor] = {}


def _frequencies(rotary_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """ω (rotary_dim / 2,) fp32, as the reference computes it; kept per (rotary_dim, θ, device),
    except while a CUDA graph is captured (a tensor made then lives in the graph's memory)."""
    key = (rotary_dim, theta, device)
    if key in _FREQUENCIES:
        return _FREQUENCIES[key]
    omega = frequencies(rotary_dim, theta, torch.float32, device)
    if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        _FREQUENCIES[key] = omega
    return omega


class _RotaryFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, positions, rotary_dim, theta):
        ctx.save_for_backward(positions)
        ctx.rotary_dim, ctx.theta = rotary_dim, theta
        return _rotated(x, positions, rotary_dim, theta, 1.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        return _rotated(grad, positions, ctx.rotary_dim, ctx.theta, -1.0), None, None, None


def apply_rotary(
    x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.apply_rotary` (see there); shapes are
    checked by the public function. The result keeps x's memory layout when its channels have
    unit stride."""
    check_device(OP, {"x": x, "positions": positions})
    check_float(OP, {"x": x})
    if records_gradient(x):
        return _RotaryFn.apply(x, positions, rotary_dim, theta)
    return _rotated(x, positions, rotary_dim, theta, 1.0)
