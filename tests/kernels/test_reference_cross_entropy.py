"""The reference cross-entropy against the formula written out in float64 (the log of a sum of
exponentials shifted by the row maximum, minus the labelled logit), its gradient against
softmax − one-hot, and the public op's input checks."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import cross_entropy
from tests.kernels.oracles import relative_error

F64 = torch.float64


def formula(x, labels, ignore_index=-100):
    """(loss (N,), ∂Σloss/∂x (N, V)) in float64, ignored rows 0."""
    x = x.to(F64)
    top = x.max(1, keepdim=True).values
    lse = (top + (x - top).exp().sum(1, keepdim=True).log()).squeeze(1)
    kept = labels != ignore_index
    safe = torch.where(kept, labels, 0)
    loss = torch.where(kept, lse - x.gather(1, safe[:, None]).squeeze(1), 0.0)
    onehot = torch.nn.functional.one_hot(safe, x.shape[1]).to(F64)
    grad = ((x - lse[:, None]).exp() - onehot) * kept[:, None]
    return loss, grad


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16])
def test_matches_the_formula(dtype):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(9, 37, generator=gen) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, 37, (9,), generator=gen)
    labels[[2, 5]] = -100
    loss = cross_entropy(x, labels)
    expected, grad = formula(x.detach(), labels)
    assert loss.dtype == (F64 if dtype == F64 else torch.float32)
    assert relative_error(loss, expected) < (1e-14 if dtype == F64 else 1e-6)
    loss.sum().backward()
    assert x.grad.dtype == dtype
    tol = {F64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    assert relative_error(x.grad, grad) < tol
    assert not x.grad[[2, 5]].any()


def test_another_ignore_index():
    x = torch.randn(4, 6, dtype=F64)
    labels = torch.tensor([0, 5, 3, 5])
    loss = cross_entropy(x, labels, ignore_index=5)
    assert relative_error(loss, formula(x, labels, ignore_index=5)[0]) < 1e-14
    assert loss[1] == 0 and loss[3] == 0


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), r"logits must be \(N, V\)"),
        (torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), r"labels must have shape \(N,\)"),
        (torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floating point"),
        (torch.zeros(2, 4), torch.zeros(2), "labels must be integers, got torch.float32"),
    ],
)
def test_bad_inputs_are_named(logits, labels, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cross_entropy(logits, labels)
