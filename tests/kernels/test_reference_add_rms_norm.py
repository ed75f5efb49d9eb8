"""The reference add + RMSNorm against the formula written out in float64, and the public op's
input checks."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import add_rms_norm
from tests.kernels.oracles import relative_error

F64 = torch.float64


def norm_inputs(shape, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x, residual = (torch.randn(*shape, generator=gen, dtype=F64).to(dtype) for _ in range(2))
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen, dtype=F64)
    return x, residual, weight


def formula(x, residual, weight, eps):
    s = x.double() + (0 if residual is None else residual.double())
    return s / (s.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight.double(), s


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 17)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_matches_the_formula(shape, with_residual):
    x, residual, weight = norm_inputs(shape, seed=len(shape))
    residual = residual if with_residual else None
    y, s = add_rms_norm(x, residual, weight, eps=1e-3)
    y_ref, s_ref = formula(x, residual, weight, 1e-3)
    assert relative_error(y, y_ref) < 1e-14 and torch.equal(s, s_ref)


def test_gradients():
    x, residual, weight = (t.requires_grad_() for t in norm_inputs((3, 6), seed=1))
    op = lambda *t: add_rms_norm(*t, eps=1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(op, (x, residual, weight), fast_mode=True)


def test_half_inputs_sum_in_float32_and_keep_their_dtypes():
    """y in the weight's dtype, normalised from the unrounded sum; s in the asked dtype."""
    x, residual, weight = norm_inputs((4, 33), seed=2, dtype=torch.bfloat16)
    weight = weight.to(torch.bfloat16)
    y, s = add_rms_norm(x, residual.float(), weight, residual_dtype=torch.float32)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref, s_ref = formula(x, residual.float(), weight, 1e-5)
    assert relative_error(s, s_ref) < 1e-7 and relative_error(y, y_ref) < 1e-2
    _, s_half = add_rms_norm(x, residual, weight)
    assert s_half.dtype == torch.bfloat16  # the default: the sum's dtype


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight": torch.ones(4)}, r"weight must have shape \(d,\) = \(5,\), got \(4,\)"),
        ({"residual": torch.ones(2, 4)}, r"residual must have shape x's shape = \(2, 5\)"),
        ({"residual_dtype": torch.int32}, "residual_dtype must be a float torch.dtype"),
        ({"x": torch.ones(2, 0)}, r"x must be \(\.\.\., d\) with d > 0"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, message):
    inputs = {"x": torch.ones(2, 5), "residual": None, "weight": torch.ones(5), **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        add_rms_norm(**inputs)
