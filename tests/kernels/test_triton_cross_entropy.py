"""Triton cross-entropy against the float64 formula, loss and gradient.

The float64 formula (checked against the reference in test_reference_cross_entropy.py) runs on
the same rounded logits. The tolerance is the larger of the dtype's and twice the error of
torch's own float32 loss on the same inputs. Without CUDA the kernel runs interpreted at tiny
sizes, in vocabulary blocks of 8 (ragged last ones).
"""

from __future__ import annotations

import math

import pytest
import torch

from mambaverse.kernels import cross_entropy as public_cross_entropy
from mambaverse.kernels.cross_entropy import reference
from mambaverse.kernels.cross_entropy import triton as kernels
from tests.kernels.test_reference_cross_entropy import formula
from tests.kernels.triton_helpers import DEVICE, gpu, rel_err, report, run_interpreted, tiny

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def check(rows, vocab, dtype, scale=3.0, ignored=0.2, padded=0, seed=0, label=""):
    """Loss and gradient of (rows, vocab) logits of spread ``scale``, a share ``ignored`` of
    rows ignored (and the last), the logits a slice of rows ``padded`` entries wider (not
    dense), against the float64 formula; the upstream gradient random per row."""
    gen = torch.Generator().manual_seed(seed)
    stored = torch.randn(rows, vocab + padded, generator=gen) * scale
    x = stored.to(dtype=dtype, device=DEVICE)[:, :vocab].requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen)
    labels[torch.rand(rows, generator=gen) < ignored] = -100
    labels[-1] = -100  # at least one row ignored
    labels[:2] = torch.tensor([0, vocab - 1])[: min(rows, 2)]  # the first and the last entry
    labels = labels.to(DEVICE)
    upstream = torch.randn(rows, generator=gen, dtype=torch.float64).to(DEVICE)
    expected, grad_of_sum = formula(x.detach(), labels)
    torch_fp32 = reference.cross_entropy(x.detach().float(), labels, -100)
    tol = max(TOL[dtype], 2 * rel_err(torch_fp32, expected))

    loss = kernels.cross_entropy(x, labels, -100)
    assert loss.dtype == torch.float32 and loss.shape == (rows,)
    with torch.no_grad():  # the evaluation path: no autograd node, the same numbers
        assert torch.equal(kernels.cross_entropy(x, labels, -100), loss)
    (dx,) = torch.autograd.grad((loss.double() * upstream).sum(), [x])
    assert dx.dtype == dtype and dx.shape == x.shape
    errors = {
        "loss": rel_err(loss, expected),
        "dx": rel_err(dx, grad_of_sum * upstream[:, None]),
    }
    report(label or f"cross_entropy ({rows}, {vocab}) {dtype}", errors, tol)
    assert not dx[labels == -100].any()


def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_the_formula(dtype):
    # 37 entries in blocks of 8: a ragged last block; one row in five ignored
    check(7, 37, dtype, label=f"cpu cross_entropy {dtype}")


@tiny
def test_a_slice_of_wider_rows_with_large_logits():
    """Logits 60 apart (exp overflows float32 without the running maximum), rows not dense."""
    check(5, 19, torch.float32, scale=60.0, padded=5, seed=1, label="cpu cross_entropy wide")


@tiny
def test_a_vocabulary_within_one_block_and_a_loss_summed():
    """Fewer entries than a block (lanes that only see padding), and the upstream gradient of a
    plain sum: one value broadcast to every row (stride 0)."""
    x = torch.randn(4, 5, device=DEVICE, requires_grad=True)
    labels = torch.tensor([4, 0, -100, 2], device=DEVICE)
    kernels.cross_entropy(x, labels, -100).sum().backward()
    expected, grad = formula(x.detach(), labels)
    assert rel_err(kernels.cross_entropy(x.detach(), labels, -100), expected) < 1e-6
    assert rel_err(x.grad, grad) < 1e-6


@tiny
def test_a_label_outside_the_vocabulary_is_nan_not_a_stray_read():
    x = torch.randn(3, 10, device=DEVICE, requires_grad=True)
    labels = torch.tensor([1, 10, -7], device=DEVICE)
    loss = kernels.cross_entropy(x, labels, -100)
    assert math.isfinite(loss[0].item()) and loss[1:].isnan().all()
    loss[0].backward()
    assert x.grad[0].isfinite().all() and x.grad[1:].isnan().all()


@tiny
def test_public_op_dispatches_to_triton():
    x = torch.randn(3, 12, device=DEVICE)
    labels = torch.tensor([0, 11, 5], device=DEVICE)
    out = public_cross_entropy(x, labels, impl="triton")
    assert rel_err(out, reference.cross_entropy(x, labels, -100)) < TOL[torch.float32]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("rows", "vocab", "padded"),
    [
        (16384, 50280, 0),  # the bench's 130m models at 16,384 tokens (vocabulary padded to 8)
        (1000, 151936, 0),  # a large vocabulary
        (333, 32001, 7),  # odd, rows not dense
    ],
)
def test_gpu_matches_the_formula(rows, vocab, padded, dtype):
    check(rows, vocab, dtype, padded=padded,
          label=f"gpu cross_entropy ({rows}, {vocab}) +{padded} {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
def test_gpu_logits_past_32_bit_offsets():
    """(45,000, 50,280) bf16 logits: 2.26e9 elements, so the last rows start past 2³¹ (4.5 GB,
    as much again for the gradient); the last 8 rows are checked against the formula."""
    rows, vocab, last = 45_000, 50_280, 8
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(rows, vocab, generator=gen, device=DEVICE).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=gen, device=DEVICE)
    loss = kernels.cross_entropy(x, labels, -100)
    upstream = torch.zeros(rows, device=DEVICE)
    upstream[-last:] = torch.randn(last, generator=gen, device=DEVICE)
    (dx,) = torch.autograd.grad((loss * upstream).sum(), [x])
    expected, grad_of_sum = formula(x.detach()[-last:], labels[-last:])
    errors = {
        "loss": rel_err(loss[-last:], expected),
        "dx": rel_err(dx[-last:], grad_of_sum * upstream[-last:, None].double()),
    }
    report("gpu cross_entropy past 2^31 elements", errors, TOL[torch.bfloat16])
