"""The reference gated RMSNorm against the formula written out in float64, and the public op's
input checks."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import gated_rms_norm
from tests.kernels.oracles import relative_error

F64 = torch.float64


def norm_inputs(shape, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x, z = (torch.randn(*shape, generator=gen, dtype=F64).to(dtype) for _ in range(2))
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen, dtype=F64)
    return x, z, weight


def formula(x, z, weight, group_size, eps, norm_before_gate):
    x, z, weight = x.double(), z.double(), weight.double()
    gate = z * torch.sigmoid(z)
    v = x if norm_before_gate else x * gate
    groups = v.unflatten(-1, (-1, group_size))
    normed = (groups / (groups.pow(2).mean(-1, keepdim=True) + eps).sqrt()).flatten(-2)
    return normed * weight * (gate if norm_before_gate else 1)


@pytest.mark.parametrize("shape, group_size", [((12,), 12), ((3, 12), 4), ((2, 3, 10), 5)])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_matches_the_formula(shape, group_size, norm_before_gate):
    x, z, weight = norm_inputs(shape, seed=len(shape))
    y = gated_rms_norm(x, z, weight, group_size, 1e-3, norm_before_gate)
    expected = formula(x, z, weight, group_size, 1e-3, norm_before_gate)
    assert relative_error(y, expected) < 1e-14


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gradients(norm_before_gate):
    inputs = tuple(t.requires_grad_() for t in norm_inputs((3, 8), seed=1))
    op = lambda *t: gated_rms_norm(*t, 4, 1e-5, norm_before_gate)  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs, fast_mode=True)


def test_half_inputs_are_normalised_in_float32_and_rounded_once():
    x, z, weight = norm_inputs((4, 33), seed=2, dtype=torch.bfloat16)
    y = gated_rms_norm(x, z, weight.float(), norm_before_gate=True)
    assert y.dtype == torch.bfloat16
    exact = formula(x, z, weight.float(), 33, 1e-5, True)
    rounding = relative_error(exact.to(torch.bfloat16), exact)  # the one rounding's error
    assert 0 < relative_error(y, exact) <= 1.05 * rounding


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"z": torch.ones(2, 4)}, r"z must have shape x's shape = \(2, 6\), got \(2, 4\)"),
        ({"weight": torch.ones(4)}, r"weight must have shape \(d,\) = \(6,\), got \(4,\)"),
        ({"group_size": 4}, r"d=6 must be a multiple of group_size=4"),
        ({"x": torch.ones(2, 0), "z": torch.ones(2, 0)}, r"x must be \(\.\.\., d\) with d > 0"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, message):
    inputs = {"x": torch.ones(2, 6), "z": torch.ones(2, 6), "weight": torch.ones(6), **kwargs}
    with pytest.raises(ValueError, match=message):
        gated_rms_norm(**inputs)
