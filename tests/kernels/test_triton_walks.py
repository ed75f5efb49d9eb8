"""Triton gather_walks / merge_walks against the reference, forward and every gradient.

The reference (``torch.gather``, itself checked against loops in test_reference_walks.py) runs
on the same rounded inputs in float64. Without CUDA the kernels run interpreted at tiny sizes
(several row and step tiles, ragged last ones).
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import conv_walks as public_conv_walks
from mambaverse.kernels import gather_walks as public_gather_walks
from mambaverse.kernels.walks import reference
from mambaverse.kernels.walks import triton as kernels
from mambaverse.plugins._vision.walker import Walker
from tests.kernels.test_reference_walks import random_plan
from tests.kernels.triton_helpers import (
    DEVICE,
    gpu,
    grads,
    rel_err,
    report,
    run_interpreted,
    tiny,
)

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def check(batch, channels, plan, dtype, scale=1.0, gated=True, channels_outermost=False,
          gate_slice=False, seed=0, label=""):  # fmt: skip
    """Both Triton ops in ``dtype`` against the float64 reference on the same rounded inputs:
    the gather exactly, the merge and the gradients within tolerance."""
    order, inverse = (t.to(DEVICE) for t in plan)
    (walks, steps), tokens = order.shape, inverse.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, tokens, generator=gen).to(dtype)
    y = torch.randn(batch, walks, channels, steps, generator=gen).to(dtype)
    gate = torch.randn(batch, channels, tokens, generator=gen).to(dtype) if gated else None
    if channels_outermost:  # the vision mixers' layout: (c, b, l) in memory
        x, gate = (t.transpose(0, 1).contiguous().transpose(0, 1) if t is not None else None
                   for t in (x, gate))  # fmt: skip
    if gate_slice:  # the second half of a (b, 2c, l) projection, not dense
        gate = torch.cat([torch.zeros_like(gate), gate], dim=1)[:, channels:]
    ours = [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, y, gate)]
    ref = [t.to(DEVICE).double().requires_grad_() if t is not None else None for t in (x, y, gate)]

    walked = kernels.gather_walks(ours[0], order, inverse)
    assert walked.dtype == dtype and walked.is_contiguous()
    assert torch.equal(walked.double(), reference.gather_walks(ref[0], order, inverse))
    merged = kernels.merge_walks(ours[1], order, inverse, scale=scale, gate=ours[2])
    merged_ref = reference.merge_walks(ref[1], order, inverse, scale=scale, gate=ref[2])
    assert merged.dtype == dtype and merged.shape == (batch, channels, tokens)
    if gated and channels_outermost:
        assert merged.stride() == ours[2].stride(), "out is stored like the gate"
    errors = {"merge": rel_err(merged, merged_ref)}

    upstream = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE)
                for t in (walked, merged)]  # fmt: skip
    gather = lambda impl: lambda t: impl.gather_walks(t, order, inverse)  # noqa: E731
    (dx,) = grads(gather(kernels), ours[:1], upstream[:1])
    (dx_ref,) = grads(gather(reference), ref[:1], upstream[:1])
    assert dx.dtype == dtype and dx.stride() == ours[0].stride(), "dx keeps x's layout"
    errors["dx"] = rel_err(dx, dx_ref)
    merge = lambda impl: lambda a, g: impl.merge_walks(a, order, inverse, scale, g)  # noqa: E731
    names = ("y", "gate") if gated else ("y",)
    found = grads(merge(kernels), ours[1:], upstream[1:])
    expected = grads(merge(reference), ref[1:], upstream[1:])
    for name, a, r in zip(names, found, expected, strict=True):
        errors[f"d{name}"] = rel_err(a, r)
    assert not found[0][..., tokens:].any(), "padding steps get no gradient"
    report(label or f"walks {dtype}", errors, TOL[dtype])


def check_conv(batch, channels, plan, dtype, width=4, bias=True, activation="silu",
               channels_outermost=False, seed=0, label=""):  # fmt: skip
    """conv_walks in ``dtype`` against the float64 reference on the same rounded inputs: the
    one-pass kernel (no gradient) and the gather + conv path (gradients of x, weight, bias)."""
    order, inverse = (t.to(DEVICE) for t in plan)
    walks, tokens = order.shape[0], inverse.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, tokens, generator=gen).to(dtype)
    if channels_outermost:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    weight = (torch.randn(walks * channels, width, generator=gen) / width**0.5).to(dtype)
    b = torch.randn(walks * channels, generator=gen).to(dtype) if bias else None
    ours = [t.to(DEVICE) if t is not None else None for t in (x, weight, b)]
    ref = [
        t.to(DEVICE).double().requires_grad_() if t is not None else None for t in (x, weight, b)
    ]
    conv = lambda impl: lambda *t: impl.conv_walks(t[0], order, inverse, *t[1:], activation)  # noqa: E731

    with torch.no_grad():
        out = conv(kernels)(*ours)
    expected = conv(reference)(*ref)
    assert out.dtype == dtype and out.shape == expected.shape and out.is_contiguous()
    errors = {"out (one pass)": rel_err(out, expected)}
    for t in ours:
        if t is not None:
            t.requires_grad_()
    upstream = [torch.randn(expected.shape, generator=gen, dtype=torch.float64).to(DEVICE)]
    with_grad = conv(kernels)(*ours)
    errors["out (with grad)"] = rel_err(with_grad, expected)
    found = grads(conv(kernels), ours, upstream)
    for name, a, r in zip(("x", "weight", "bias"), found, grads(conv(reference), ref, upstream)):
        errors[f"d{name}"] = rel_err(a, r)
    report(label or f"conv_walks {dtype}", errors, TOL[dtype])


def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("channels_outermost", [False, True], ids=["contiguous", "(c, b, l)"])
def test_matches_reference(gated, channels_outermost):
    # 3 channels × 2 batches in row tiles of 2, 13 tokens padded to 16 in step tiles of 8
    check(2, 3, random_plan(2, 13, 16, seed=1), torch.float32, scale=0.5, gated=gated,
          channels_outermost=channels_outermost,
          label=f"cpu walks gated={gated} outermost={channels_outermost}")  # fmt: skip


@tiny
def test_gate_sliced_from_a_wider_projection():
    check(2, 3, random_plan(2, 13, 16, seed=3), torch.float32, gate_slice=True,
          label="cpu walks gate slice")  # fmt: skip


@tiny
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_four_walks_of_a_real_scan(dtype):
    plan = Walker("cross2d").token_orders((3, 4), None, torch.device("cpu"), 16)
    check(1, 3, plan, dtype, label=f"cpu walks cross2d {dtype}")


@tiny
@pytest.mark.parametrize("needs_grad", ["y", "gate"])
def test_merge_gradient_of_one_input_only(needs_grad):
    """Only y or only the gate requires a gradient: the other gets none, this one the
    reference's."""
    order, inverse = (t.to(DEVICE) for t in random_plan(2, 13, 16, seed=4))
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(2, 2, 3, 16, generator=gen).to(DEVICE)
    gate = torch.randn(2, 3, 13, generator=gen).to(DEVICE)
    upstream = torch.randn(2, 3, 13, generator=gen, dtype=torch.float64).to(DEVICE)
    grads_of = {}
    for impl, dtype in ((kernels, torch.float32), (reference, torch.float64)):
        inputs = {"y": y.to(dtype), "gate": gate.to(dtype)}
        inputs[needs_grad].requires_grad_()
        out = impl.merge_walks(inputs["y"], order, inverse, 0.5, inputs["gate"])
        (grads_of[impl],) = torch.autograd.grad((out.double() * upstream).sum(), inputs[needs_grad])
    assert rel_err(grads_of[kernels], grads_of[reference]) < TOL[torch.float32]


@tiny
def test_public_op_dispatches_to_triton():
    order, inverse = (t.to(DEVICE) for t in random_plan(2, 5, 8, seed=2))
    x = torch.randn(2, 3, 5, device=DEVICE)
    walked = public_gather_walks(x, order, inverse, impl="triton")
    assert torch.equal(walked, reference.gather_walks(x, order, inverse))


@tiny
@pytest.mark.parametrize("channels_outermost", [False, True], ids=["contiguous", "(c, b, l)"])
def test_conv_walks_matches_reference(channels_outermost):
    # 2 walks of 13 tokens padded to 16 steps, tiles of 2 rows × 8 steps: windows cross tiles
    check_conv(2, 3, random_plan(2, 13, 16, seed=6), torch.float32,
               channels_outermost=channels_outermost,
               label=f"cpu conv_walks outermost={channels_outermost}")  # fmt: skip


@tiny
@pytest.mark.parametrize("width", [3, 1])
def test_conv_walks_other_widths_without_bias_or_activation_in_bfloat16(width):
    plan = Walker("bidirectional").token_orders((3, 4), 6, torch.device("cpu"), 16)
    check_conv(1, 5, plan, torch.bfloat16, width=width, bias=False, activation=None,
               label=f"cpu conv_walks w{width} no bias bf16")  # fmt: skip


@tiny
def test_public_conv_walks_dispatches_to_triton():
    order, inverse = (t.to(DEVICE) for t in random_plan(2, 5, 8, seed=2))
    x, weight = torch.randn(2, 3, 5, device=DEVICE), torch.randn(6, 4, device=DEVICE)
    out = public_conv_walks(x, order, inverse, weight, activation="silu", impl="triton")
    expected = reference.conv_walks(x, order, inverse, weight, activation="silu")
    assert rel_err(out, expected) < TOL[torch.float32]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "scan, grid, cls_index, batch, channels",
    [
        ("bidirectional", (64, 64), 2048, 16, 384),  # Vim-Ti at 1024 px: 4097 tokens -> 4112 steps
        ("bidirectional", (14, 14), 98, 8, 768),  # Vim-S at 224 px
        ("cross2d", (56, 56), None, 4, 192),  # VMamba-T's first stage
        ("cross2d", (7, 9), None, 3, 37),  # odd everything
    ],
)
def test_gpu_matches_reference(scan, grid, cls_index, batch, channels, dtype):
    plan = Walker(scan).token_orders(grid, cls_index, torch.device("cpu"), 16)
    check(batch, channels, plan, dtype, scale=1 / plan[0].shape[0], channels_outermost=True,
          label=f"gpu walks {scan} {grid} b{batch} c{channels} {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
def test_gpu_more_row_tiles_than_a_grid_axis_of_65535():
    """1024 × 384 rows in tiles of 4: 98,304 row tiles, past CUDA's limit on grid axes 1 and 2."""
    plan = Walker("bidirectional").token_orders((2, 2), 2, torch.device("cpu"), 16)
    check(1024, 384, plan, torch.bfloat16, scale=0.5, channels_outermost=True,
          label="gpu walks 1024 x 384 rows")  # fmt: skip


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "scan, grid, cls_index, batch, channels",
    [
        ("bidirectional", (64, 64), 2048, 16, 384),  # Vim-Ti at 1024 px
        ("cross2d", (7, 9), None, 3, 37),  # odd everything
    ],
)
def test_gpu_conv_walks_matches_reference(scan, grid, cls_index, batch, channels, dtype):
    plan = Walker(scan).token_orders(grid, cls_index, torch.device("cpu"), 16)
    check_conv(batch, channels, plan, dtype, channels_outermost=True,
               label=f"gpu conv_walks {scan} {grid} b{batch} c{channels} {dtype}")  # fmt: skip
