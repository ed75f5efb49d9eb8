"""Triton gated_rms_norm against the reference, forward and every gradient.

The reference (checked against the formula in test_reference_gated_rms_norm.py) runs in float64
on the same rounded inputs. Without CUDA the kernel runs interpreted at tiny sizes: row tiles of
2, two backward programs each walking several tiles, ragged last tiles, padded groups, several
groups per row and z a strided slice of a wider projection (as Mamba-2 passes it).
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import gated_rms_norm as public_gated_rms_norm
from mambaverse.kernels.gated_rms_norm import reference
from mambaverse.kernels.gated_rms_norm import triton as kernels
from tests.kernels.triton_helpers import (
    CUDA,
    DEVICE,
    gpu,
    grads,
    rel_err,
    report,
    run_interpreted,
    tiny,
)

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def check(shape, group_size, dtype, norm_before_gate=False, z_in_projection=False,
          wants=("x", "z", "weight"), seed=0, label=""):  # fmt: skip
    """y, then the gradients of the inputs in ``wants`` against the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen).to(dtype)
    z = torch.randn(*shape, generator=gen).to(dtype)
    if z_in_projection:  # z: the first d channels of a (..., 3d) projection, row stride 3d
        wide = torch.randn(*shape[:-1], 3 * shape[-1], generator=gen).to(dtype)
        z = wide[..., : shape[-1]]
    weight = 1 + 0.5 * torch.randn(shape[-1], generator=gen)
    names = ("x", "z", "weight")
    ours = [t.to(DEVICE).requires_grad_(n in wants) for n, t in zip(names, (x, z, weight))]
    ref = [t.to(DEVICE).double().requires_grad_(n in wants) for n, t in zip(names, (x, z, weight))]
    if z_in_projection:  # keep the strided view (a leaf cannot be a view: detach keeps strides)
        ours[1] = wide.to(DEVICE)[..., : shape[-1]].detach().requires_grad_("z" in wants)
        assert ours[1].stride(-2) == 3 * shape[-1]

    op = lambda impl: lambda *t: impl.gated_rms_norm(*t, group_size, 1e-5, norm_before_gate)  # noqa: E731
    y = op(kernels)(*ours)
    y_ref = op(reference)(*ref)
    assert y.dtype == dtype and y.shape == x.shape
    errors = {"y": rel_err(y, y_ref)}
    with torch.no_grad():  # the inference path: no autograd node, no 1/rms stored
        assert torch.equal(op(kernels)(*ours), y)
    upstream = [torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)]
    found = grads(op(kernels), ours, upstream)
    expected = grads(op(reference), ref, upstream)
    wanted = [n for n, t in zip(names, ours) if t.requires_grad]
    for name, a, r in zip(wanted, found, expected, strict=True):
        assert a.dtype == dict(zip(names, ours))[name].dtype, f"d{name} in {name}'s dtype"
        errors[f"d{name}"] = rel_err(a, r)
    report(label or f"gated_rms_norm {shape} g{group_size} {dtype}", errors, TOL[dtype])


def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_matches_reference(dtype, norm_before_gate):
    # 3 × 5 rows in tiles of 2 (a ragged last one), 3 groups of 6 channels padded to 8
    check((3, 5, 18), 6, dtype, norm_before_gate,
          label=f"cpu gated_rms_norm {dtype} before={norm_before_gate}")  # fmt: skip


@tiny
def test_groups_too_wide_to_prefetch():
    # Interpreted, 200 channels padded to 256 make 2-row tiles of 512 elements per thread: the
    # backward loads each tile as it goes; the other tiny cases take the prefetching path. (On
    # the GPU this width prefetches; the 16384-wide GPU case does not.)
    assert kernels._backward_tile(200)[3] == CUDA and kernels._backward_tile(6)[3]
    assert not kernels._backward_tile(16384)[3]
    check((2, 5, 400), 200, torch.float32, label="tiny gated_rms_norm, 200-channel groups")


@tiny
def test_one_group_and_z_sliced_from_a_projection():
    check((2, 7, 12), 12, torch.float16, z_in_projection=True,
          label="cpu gated_rms_norm z strided fp16")  # fmt: skip


@tiny
@pytest.mark.parametrize("wants", [("x",), ("z",), ("weight",), ("z", "weight")])
def test_gradient_of_some_inputs_only(wants):
    check((4, 8), 4, torch.float32, wants=wants, label=f"cpu gated_rms_norm grads {wants}")


@tiny
def test_public_op_dispatches_to_triton():
    x, z = (torch.randn(3, 10, device=DEVICE) for _ in range(2))
    weight = torch.rand(10, device=DEVICE)
    y = public_gated_rms_norm(x, z, weight, 5, impl="triton")
    y_ref = reference.gated_rms_norm(x, z, weight, 5)
    assert rel_err(y, y_ref) < TOL[torch.float32]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape, group_size, z_in_projection",
    [
        ((8, 2048, 1536), 1536, True),  # Mamba-2 130m's training shape, z sliced from in_proj
        ((2, 1000, 2048), 256, False),  # eight groups
        ((3, 77, 1000), 200, True),  # odd everything
        ((2, 64, 16384), 16384, False),  # one row per tile
    ],
)
@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_gpu_matches_reference(shape, group_size, z_in_projection, dtype, norm_before_gate):
    check(shape, group_size, dtype, norm_before_gate, z_in_projection,
          label=f"gpu gated_rms_norm {shape} g{group_size} {dtype} before={norm_before_gate}")  # fmt: skip


@tiny
def test_a_strided_weight_is_read_as_it_is():
    x, z = torch.randn(2, 5, 8, device=DEVICE), torch.randn(2, 5, 8, device=DEVICE)
    stacked = torch.randn(8, 3, device=DEVICE)  # the weights of three layers, one per column
    y = kernels.gated_rms_norm(x, z, stacked[:, 1], 4)
    assert rel_err(y, reference.gated_rms_norm(x, z, stacked[:, 1].contiguous(), 4)) < 1e-6
