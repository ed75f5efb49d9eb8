"""Triton add_rms_norm against the reference, forward and every gradient.

The reference (checked against the formula in test_reference_add_rms_norm.py) runs in float64
on the same rounded inputs. Without CUDA the kernel runs interpreted at tiny sizes: row tiles of
2, two backward programs each walking several tiles, ragged last tiles and padded channels.
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import add_rms_norm as public_add_rms_norm
from mambaverse.kernels.add_rms_norm import reference
from mambaverse.kernels.add_rms_norm import triton as kernels
from tests.kernels.triton_helpers import DEVICE, gpu, grads, rel_err, report, run_interpreted, tiny

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def check(shape, dtype, residual_dtype=torch.float32, with_residual=True, transposed=False,
          wants=("x", "residual", "weight"), seed=0, label=""):  # fmt: skip
    """y and s in their dtypes, then the gradients of the inputs in ``wants`` against the float64
    reference, both outputs receiving a random upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).to(dtype)
    if transposed:  # a (b, l, d) view of (b, d, l) storage: no unit channel stride
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    residual = torch.randn(*shape, generator=gen).to(residual_dtype) if with_residual else None
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(dtype)
    names = ("x", "residual", "weight")
    ours, ref = [], []
    for name, t in zip(names, (x, residual, weight)):
        needs = name in wants and t is not None
        ours.append(t.to(DEVICE).requires_grad_(needs) if t is not None else None)
        ref.append(t.to(DEVICE).double().requires_grad_(needs) if t is not None else None)

    y, s = kernels.add_rms_norm(*ours, 1e-5, residual_dtype)
    y_ref, s_ref = reference.add_rms_norm(*ref, 1e-5, torch.float64)
    assert y.dtype == dtype and s.dtype == residual_dtype and y.shape == s.shape == x.shape
    errors = {"y": rel_err(y, y_ref), "s": rel_err(s, s_ref)}
    with torch.no_grad():  # the inference path: no autograd node, no 1/rms stored
        assert all(map(torch.equal, kernels.add_rms_norm(*ours, 1e-5, residual_dtype), (y, s)))
    upstream = [torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE) for _ in "ys"]
    op = lambda impl, dt: lambda *t: impl.add_rms_norm(*t, 1e-5, dt)  # noqa: E731
    found = grads(op(kernels, residual_dtype), ours, upstream)
    expected = grads(op(reference, torch.float64), ref, upstream)
    wanted = [n for n, t in zip(names, ours) if t is not None and t.requires_grad]
    for name, a, r in zip(wanted, found, expected, strict=True):
        original = dict(zip(names, ours))[name]
        assert a.dtype == original.dtype, f"d{name} in {name}'s dtype"
        errors[f"d{name}"] = rel_err(a, r)
    # a half residual stream rounds s, and the backward reads the rounded s
    report(label or f"add_rms_norm {shape} {dtype}", errors, max(TOL[dtype], TOL[residual_dtype]))


def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(dtype):
    # 3 × 5 rows in tiles of 2 (a ragged last one), 13 channels padded to 16
    check((3, 5, 13), dtype, label=f"cpu add_rms_norm {dtype}")


@tiny
def test_without_residual_and_half_residual_stream():
    check((7, 6), torch.float16, residual_dtype=torch.float16, with_residual=False,
          label="cpu add_rms_norm no residual fp16")  # fmt: skip


@tiny
def test_residual_in_its_own_dtype_and_strided_x():
    """A bf16 residual stream summed with fp32 x stored channels-outermost: x is copied once to
    rows, each gradient comes back in its input's dtype."""
    check((2, 9, 5), torch.float32, residual_dtype=torch.bfloat16, transposed=True,
          label="cpu add_rms_norm strided")  # fmt: skip


@tiny
@pytest.mark.parametrize("wants", [("x",), ("weight",), ("residual", "weight")])
def test_gradient_of_some_inputs_only(wants):
    check((4, 8), torch.float32, wants=wants, label=f"cpu add_rms_norm grads {wants}")


@tiny
def test_only_the_norm_used_downstream():
    """s unused after the block (the last one's residual): no gradient reaches it, and the
    backward runs without one."""
    x = torch.randn(5, 12, device=DEVICE, requires_grad=True)
    residual = torch.randn(5, 12, device=DEVICE, requires_grad=True)
    weight = torch.randn(12, device=DEVICE)
    y, _ = kernels.add_rms_norm(x, residual, weight, 1e-5, torch.float32)
    dx, dr = torch.autograd.grad(y.sum(), (x, residual))
    xd = x.detach().double().requires_grad_()
    y_ref, _ = reference.add_rms_norm(xd, residual.detach().double(), weight.double())
    (dx_ref,) = torch.autograd.grad(y_ref.sum(), xd)
    assert rel_err(dx, dx_ref) < TOL[torch.float32] and torch.equal(dx, dr)


@tiny
def test_public_op_dispatches_to_triton():
    x, weight = torch.randn(3, 10, device=DEVICE), torch.rand(10, device=DEVICE)
    y, s = public_add_rms_norm(x, None, weight, impl="triton")
    y_ref, _ = reference.add_rms_norm(x, None, weight)
    assert rel_err(y, y_ref) < TOL[torch.float32] and torch.equal(s, x)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [
        (16, 4097, 192),  # Vim-Ti at 1024 px
        (2, 2048, 768),  # Mamba-130m's width
        (3, 77, 1000),  # odd everything
        (2, 64, 8192),  # one row per tile
    ],
)
def test_gpu_matches_reference(shape, dtype):
    check(shape, dtype, label=f"gpu add_rms_norm {shape} {dtype}")


@tiny
def test_a_strided_weight_is_read_as_it_is():
    x, residual = torch.randn(2, 5, 8, device=DEVICE), torch.randn(2, 5, 8, device=DEVICE)
    stacked = torch.randn(8, 3, device=DEVICE)  # the weights of three layers, one per column
    y, s = kernels.add_rms_norm(x, residual, stacked[:, 1])
    y_ref, s_ref = reference.add_rms_norm(x, residual, stacked[:, 1].contiguous())
    assert rel_err(y, y_ref) < 1e-6 and rel_err(s, s_ref) < 1e-6
