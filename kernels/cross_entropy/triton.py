"""Cross-entropy in Triton: one read of the logits forward, one read and one write backward.

Unfused, a bfloat16 language model's loss casts the (N, V) logits to a float32 copy, runs
log-softmax over it, gathers, and backward writes a float32 gradient that is cast back: about
six passes over N · V elements, twice of them in float32 (at 16,384 tokens and a 50k vocabulary
that is 3.3 GB per float32 copy). Here:

- forward: one program per row walks the vocabulary in blocks, keeping a running maximum m and
  sum s = Σ exp(x − m) per lane (rescaled when m grows), so that lse = m + log s in one read; it
  writes loss = lse − x[label] and keeps lse (N floats) for the backward;
- backward: one program per (row, block of the vocabulary) writes
  ∂L/∂x = g_n · (exp(x − lse_n) − [v = label_n]) in the logits' dtype.

An ignored row (label = ignore_index) has loss 0 and gradient 0; a label outside [0, V) gives a
NaN loss and gradient instead of a read out of bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from mambaverse.kernels.triton_support import (
    LOG2E,
    CachedLaunch,
    cdiv,
    check_device,
    check_float,
    interpreting,
    records_gradient,
)

OP = "cross_entropy"
BLOCK_V = 4096  # vocabulary entries per step; the interpreter's 8 give tiny tests ragged blocks
# The running maximum starts finite: exp(−inf − (−inf)) would be NaN in a lane that has only
# seen padding so far. A constexpr, as compiled kernels may read no plain global.
FLOOR = tl.constexpr(-1e30)


@CachedLaunch
@triton.jit
def _loss_fwd(x_p, label_p, loss_p, lse_p, vocab, s_x, s_label, ignore_index,
              BLOCK_V: tl.constexpr):  # fmt: skip
    """loss (N,) and lse (N,) fp32 from x (N, V) with unit stride along V; grid (N,)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_p + row * s_x
    v = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_V,), FLOOR, tl.float32)  # running maximum per lane
    s = tl.zeros((BLOCK_V,), tl.float32)  # Σ exp(x − m) per lane
    for start in range(0, vocab, BLOCK_V):
        x = tl.load(x_row + start + v, mask=start + v < vocab, other=float("-inf"))
        x = x.to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp2((m - m_new) * LOG2E) + tl.exp2((x - m_new) * LOG2E)
        m = m_new
    m_row = tl.max(m, 0)
    lse = m_row + tl.log(tl.sum(s * tl.exp2((m - m_row) * LOG2E), 0))
    label = tl.load(label_p + row * s_label).to(tl.int64)
    valid = (label >= 0) & (label < vocab)
    target = tl.load(x_row + label, mask=valid, other=0.0).to(tl.float32)
    loss = tl.where(valid, lse - target, float("nan"))
    tl.store(loss_p + row, tl.where(label == ignore_index, 0.0, loss))
    tl.store(lse_p + row, lse)


@CachedLaunch
@triton.jit
def _loss_bwd(x_p, label_p, lse_p, g_p, dx_p, vocab, blocks, s_x, s_label, s_g, s_dx,
              ignore_index, BLOCK_V: tl.constexpr):  # fmt: skip
    """dx (N, V) = g_n · (softmax(x_n) − onehot(label_n)), x's dtype; grid (N · blocks,)."""
    pid = tl.program_id(0)
    row = (pid // blocks).to(tl.int64)
    v = (pid % blocks) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = v < vocab
    label = tl.load(label_p + row * s_label).to(tl.int64)
    g = tl.load(g_p + row * s_g).to(tl.float32)
    g = tl.where((label >= 0) & (label < vocab), g, float("nan"))
    g = tl.where(label == ignore_index, 0.0, g)
    lse = tl.load(lse_p + row)
    x = tl.load(x_p + row * s_x + v, mask=mask, other=0.0).to(tl.float32)
    p = tl.exp2((x - lse) * LOG2E)
    dx = g * (p - tl.where(v == label, 1.0, 0.0))
    tl.store(dx_p + row * s_dx + v, dx.to(dx_p.dtype.element_ty), mask=mask)


def _block_v() -> int:
    return 8 if interpreting() else BLOCK_V


def _forward(x: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """loss (N,) and lse (N,), fp32, of x (N, V) with unit stride along V."""
    rows, vocab = x.shape
    loss = torch.empty(rows, device=x.device, dtype=torch.float32)
    lse = torch.empty(rows, device=x.device, dtype=torch.float32)
    if rows:
        _loss_fwd[(rows,)](
            x, labels, loss, lse, vocab, x.stride(0), labels.stride(0), ignore_index,
            BLOCK_V=_block_v(), num_warps=8,
        )  # fmt: skip
    return loss, lse


class _CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, ignore_index):
        loss, lse = _forward(x, labels, ignore_index)
        ctx.save_for_backward(x, labels, lse)
        ctx.ignore_index = ignore_index
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, labels, lse = ctx.saved_tensors
        rows, vocab = x.shape
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        block_v = _block_v()
        blocks = cdiv(vocab, block_v)
        if rows:
            _loss_bwd[(rows * blocks,)](
                x, labels, lse, grad, dx, vocab, blocks, x.stride(0), labels.stride(0),
                grad.stride(0), dx.stride(0), ctx.ignore_index, BLOCK_V=block_v, num_warps=8,
            )  # fmt: skip
        return dx, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.cross_entropy` (see there); shapes are
    checked by the public function."""
    check_device(OP, {"logits": logits, "labels": labels})
    check_float(OP, {"logits": logits})
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if records_gradient(logits):
        return _CrossEntropyFn.apply(logits, labels, ignore_index)
    return _forward(logits, labels, ignore_index)[0]
