"""The reference causal depthwise convolution and its decoding step against the loop oracle."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import causal_conv1d, causal_conv1d_update
from tests.kernels.oracles import causal_conv1d_oracle, relative_error

F64 = torch.float64


def conv_inputs(batch, dim, length, width, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x, weight, bias = (
        torch.randn(*shape, generator=gen, dtype=F64).to(dtype)
        for shape in ((batch, dim, length), (dim, width), (dim,))
    )
    return x, weight, bias


@pytest.mark.parametrize("batch, dim, length, width", [(2, 3, 1, 4), (2, 5, 17, 4), (1, 4, 3, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_the_oracle(batch, dim, length, width, with_bias, activation):
    x, weight, bias = conv_inputs(batch, dim, length, width, seed=length + width)
    bias = bias if with_bias else None
    y = causal_conv1d(x, weight, bias, activation=activation)
    assert y.shape == x.shape
    assert relative_error(y, causal_conv1d_oracle(x, weight, bias, activation)) < 1e-13


def test_gradients():
    x, weight, bias = (t.requires_grad_(True) for t in conv_inputs(2, 3, 6, 4, seed=1))
    conv = lambda *t: causal_conv1d(*t, activation="silu")  # noqa: E731
    assert torch.autograd.gradcheck(conv, (x, weight, bias), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x, weight, bias = conv_inputs(2, 8, 20, 4, seed=2, dtype=dtype)
    y = causal_conv1d(x, weight, bias, activation="silu")
    assert y.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert relative_error(y, causal_conv1d_oracle(x, weight, bias, "silu")) < tolerance


def test_update_steps_through_the_convolution():
    x, weight, bias = conv_inputs(2, 5, 9, 4, seed=3)
    conv_state = torch.zeros(2, 5, 4, dtype=F64)
    ys = [causal_conv1d_update(conv_state, x[..., t], weight, bias, "silu") for t in range(9)]
    assert relative_error(torch.stack(ys, -1), causal_conv1d(x, weight, bias, "silu")) < 1e-13
    assert torch.equal(conv_state, x[..., -4:])  # the window holds the last w inputs


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda x, w: causal_conv1d(x, w[:3]),
            "weight must have shape (d, w) = (4, 4), got (3, 4)",
        ),
        (lambda x, w: causal_conv1d(x[0], w), "x must be (b, d, l), got shape (4, 10)"),
        (lambda x, w: causal_conv1d(x, w, torch.zeros(5)), "bias must have shape (d,) = (4,)"),
        (lambda x, w: causal_conv1d(x, w, activation="gelu"), "activation must be one of"),
        (
            lambda x, w: causal_conv1d_update(torch.zeros(2, 4, 3), x[..., 0], w),
            "conv_state must have shape (b, d, w) = (2, 4, 4), got (2, 4, 3)",
        ),
    ],
)
def test_bad_inputs_say_what_was_expected(call, message):
    with pytest.raises(ValueError) as err:
        call(torch.randn(2, 4, 10), torch.randn(4, 4))
    assert message in str(err.value)
