"""Triton causal convolution against the float64 reference, forward and every gradient, and its
decoding step (the rolling window updated in place) against the reference step.

The reference (``F.conv1d`` with d groups, itself checked against the loop oracle in
test_reference_causal_conv1d.py) runs on the same rounded inputs in float64. Without CUDA the
kernels run interpreted at tiny sizes (several time and channel tiles, ragged last ones).
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels.causal_conv1d import causal_conv1d as public_causal_conv1d
from mambaverse.kernels.causal_conv1d import causal_conv1d_update as public_causal_conv1d_update
from mambaverse.kernels.causal_conv1d import reference
from mambaverse.kernels.causal_conv1d import triton as kernels
from tests.kernels.triton_helpers import (
    DEVICE,
    INTERPRETED,
    gpu,
    grads,
    offsets_limit,
    rel_err,
    report,
    run_interpreted,
    tiny,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def check(batch, dim, length, width, dtype, bias=True, activation="silu", channels_last=False,
          row_width=None, seed=0, label=""):  # fmt: skip
    """Triton in ``dtype`` against the float64 reference on the same rounded inputs; with
    ``row_width``, x is the first ``dim`` channels of a (b, l, row_width) projection (as
    Mamba-2's xBC is of in_proj's output)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=gen).to(dtype)
    weight = (torch.randn(dim, width, generator=gen) / width**0.5).to(dtype)
    b = torch.randn(dim, generator=gen).to(dtype) if bias else None
    if channels_last:  # as the Mamba block passes x: a transposed (b, l, d) slice
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    ours = [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, weight, b)]
    if row_width is not None:  # a leaf cannot be a view: detach keeps the strides
        wide = torch.zeros(batch, length, row_width, dtype=dtype, device=DEVICE)
        wide[..., :dim] = ours[0].detach().transpose(1, 2)
        ours[0] = wide[..., :dim].transpose(1, 2).detach().requires_grad_()
        assert ours[0].stride() == (length * row_width, 1, row_width)
    ref = [
        t.to(DEVICE).double().requires_grad_() if t is not None else None for t in (x, weight, b)
    ]

    y = kernels.causal_conv1d(*ours, activation=activation)
    y_ref = reference.causal_conv1d(*ref, activation=activation)
    assert y.dtype == dtype and y.shape == x.shape
    # y keeps x's layout: the same strides, or for a slice its dense channels-innermost form
    layout = ours[0].stride() if row_width is None else (length * dim, 1, dim)
    assert y.stride() == layout, "y keeps x's layout"
    errors = {"y": rel_err(y, y_ref)}

    gen_w = torch.Generator().manual_seed(seed + 1)
    upstream = torch.randn(y.shape, generator=gen_w, dtype=torch.float64).to(DEVICE)
    # ∂L/∂y in y's layout, as the Mamba block's arrives: channels innermost x and ∂L/∂y take the
    # walk backward, time innermost the halo tiles
    upstream = torch.empty_like(y, dtype=torch.float64).copy_(upstream)
    conv = lambda impl: lambda *a: impl.causal_conv1d(*a, activation=activation)  # noqa: E731
    g = grads(conv(kernels), ours, [upstream])
    g_ref = grads(conv(reference), ref, [upstream])
    for name, a, r, t in zip(("x", "weight", "bias"), g, g_ref, ours):
        assert a.dtype == t.dtype and a.shape == t.shape, name
        errors[f"d{name}"] = rel_err(a, r)
    report(label or f"causal_conv1d {dtype}", errors, TOL[dtype])


def check_update(batch, dim, width, dtype, bias=True, activation="silu", steps=3, seed=0,
                 state_dtype=None, strided_state=False, label=""):  # fmt: skip
    """Several Triton decoding steps from a random window against the float64 reference step on
    the same rounded window: every output within tolerance, and the window after every step
    exactly the old one shifted with x (rounded to the window's dtype) appended. x is a strided
    slice (as in_proj's half); with ``strided_state`` the window is a transposed view."""
    state_dtype = state_dtype or dtype
    gen = torch.Generator().manual_seed(seed)
    if strided_state:  # (b, d, w) with the channels innermost
        window = torch.randn(batch, width, dim, generator=gen).to(state_dtype).transpose(1, 2)
    else:
        window = torch.randn(batch, dim, width, generator=gen).to(state_dtype)
    weight = (torch.randn(dim, width, generator=gen) / width**0.5).to(dtype)
    b = torch.randn(dim, generator=gen).to(dtype) if bias else None
    window, weight, b = (t.to(DEVICE) if t is not None else None for t in (window, weight, b))
    errors = {}
    with torch.no_grad():
        for step in range(steps):
            xz = torch.randn(batch, 2 * dim, generator=gen).to(dtype).to(DEVICE)
            x = xz[:, :dim]  # strided: rows 2·dim apart
            before = window.double()
            y = kernels.causal_conv1d_update(window, x, weight, b, activation=activation)
            stored_x = x.to(state_dtype).double()  # what the window keeps of x
            shifted = torch.cat([before[:, :, 1:], stored_x[:, :, None]], dim=-1)
            y_ref = reference.causal_conv1d_update(
                before,
                stored_x,
                weight.double(),
                None if b is None else b.double(),
                activation=activation,
            )  # fmt: skip  (the reference shifts `before` in place too)
            assert y.dtype == dtype and y.shape == (batch, dim)
            assert window.dtype == state_dtype
            assert torch.equal(window[..., :-1].double(), shifted[..., :-1]), f"step {step}"
            if INTERPRETED and state_dtype != dtype:
                # Triton's interpreter truncates float casts (the GPU rounds to nearest, as
                # torch): one unit in the last place of the window's dtype
                ulp = torch.finfo(state_dtype).eps * stored_x.abs()
                assert ((window[..., -1].double() - stored_x).abs() <= ulp).all()
            else:
                assert torch.equal(window[..., -1].double(), stored_x), f"x at step {step}"
            errors[f"y{step}"] = rel_err(y, y_ref)
    # y within x's tolerance, but in the interpreter the truncated x costs the window's
    tol = TOL[state_dtype] if INTERPRETED and state_dtype != dtype else TOL[dtype]
    report(label or f"causal_conv1d_update {dtype}", errors, tol)


# -- tiny cases: interpreted on CPU (through test_interpreted), compiled on CUDA ---------------------
def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels innermost"])
@pytest.mark.parametrize("activation", ["silu", None])
def test_matches_reference(channels_last, activation):
    # 11 steps in tiles of 4 (the backward's: 16 overlapping by 8) and 6 channels in tiles of 4:
    # ragged tiles on both axes.
    check(2, 6, 11, 4, torch.float32, activation=activation, channels_last=channels_last,
          label=f"cpu conv {activation} channels_last={channels_last}")  # fmt: skip


@tiny
def test_odd_width_without_bias_and_shorter_than_the_filter():
    check(1, 5, 9, 3, torch.float32, bias=False, label="cpu conv width 3, no bias")
    check(2, 3, 2, 4, torch.float32, label="cpu conv 2 steps, width 4")


@tiny
@pytest.mark.parametrize("width", [4, 9, 10])
def test_backward_across_overlapping_time_tiles(width):
    """The time-innermost backward's tiles (16 steps on the interpreter) overlap by a halo of
    w − 1 steps rounded up to 8: 29 steps make four of them (two at width 10, whose halo of 16
    doubles the tile), the last ragged; width 9 fills the halo exactly."""
    check(2, 5, 29, width, torch.float32, seed=width, label=f"cpu conv 29 steps, width {width}")


WALK_TILES = {  # rows of R · CHUNKS steps; R = 3 is no power of two and below w − 1 at w = 5, 9
    "small": {"R": 2, "CHUNKS": 2, "ROWS": 2, "BLOCK_D": 4, "FAST": False, "num_warps": 1},
    "odd": {"R": 3, "CHUNKS": 2, "ROWS": 4, "BLOCK_D": 8, "FAST": False, "num_warps": 1},
}


@tiny
@pytest.mark.parametrize("tiles", WALK_TILES)
@pytest.mark.parametrize("width, bias, silu", [(2, True, True), (3, False, True), (4, True, False),
                                               (5, True, True), (9, False, True)])  # fmt: skip
def test_walk_across_rows_chunks_and_programs(tiles, width, bias, silu):
    """The channels-innermost backward walks each row's steps backwards carrying the last w − 1
    inputs and gradients between its chunks, and recomputes the next row's first w − 1 gradients
    at each row's end: 41 steps over programs of 8 or 24 steps (the last partly past the end,
    with one row wholly past it), 11 channels in blocks of 4 or 8, x a slice of rows 13 wide."""
    gen = torch.Generator().manual_seed(width)
    batch, dim, length = 2, 11, 41
    wide = torch.randn(batch, length, dim + 2, generator=gen, dtype=torch.float64)
    x = wide[..., 1 : 1 + dim].transpose(1, 2)
    weight = torch.randn(dim, width, generator=gen, dtype=torch.float64) / width**0.5
    b = torch.randn(dim, generator=gen, dtype=torch.float64) if bias else None
    dy = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64).transpose(1, 2)
    ours = [t.float().to(DEVICE) if t is not None else None for t in (x, weight, b, dy)]
    ours[0] = wide.float().to(DEVICE)[..., 1 : 1 + dim].transpose(1, 2)  # keep the slice
    dx = torch.empty_like(ours[3])
    dw, dbias = kernels._backward_walk(*ours, dx, silu, tiles=WALK_TILES[tiles])
    ref = [t.to(DEVICE).requires_grad_() if t is not None else None for t in (x, weight, b)]
    y = reference.causal_conv1d(*ref, activation="silu" if silu else None)
    expected = torch.autograd.grad(y, [t for t in ref if t is not None], dy.to(DEVICE))
    found = [dx, dw.sum(0), dbias.sum(0)][: len(expected)]
    errors = {n: rel_err(a, r) for n, a, r in zip(("dx", "dweight", "dbias"), found, expected)}
    report(f"cpu conv walk {tiles} w{width} bias={bias} silu={silu}", errors, TOL[torch.float32])


@tiny
def test_slice_of_a_wider_projection():
    # x as Mamba-2 passes it: channels of rows 28 = 4 · 7 elements apart (the forward declares
    # the stride a multiple of 4; on the GPU that keeps its loads vectorised)
    check(2, 12, 21, 4, torch.float32, row_width=28, seed=1, label="cpu conv slice of rows 28")


@tiny
def test_bfloat16_accumulates_in_fp32():
    check(2, 8, 13, 4, torch.bfloat16, channels_last=True, label="cpu conv bf16")


@tiny
def test_strided_weight_and_bias():
    x = torch.randn(2, 5, 9, device=DEVICE)
    weight = torch.randn(4, 5, device=DEVICE).t()  # (5, 4), transposed strides
    bias = torch.randn(10, device=DEVICE)[::2]  # every other element
    y = kernels.causal_conv1d(x, weight, bias, activation="silu")
    y_ref = reference.causal_conv1d(x.double(), weight.double(), bias.double(), activation="silu")
    assert rel_err(y, y_ref) < 1e-6


@tiny
def test_public_op_dispatches_to_triton():
    x = torch.randn(1, 4, 7, device=DEVICE)
    weight = torch.randn(4, 4, device=DEVICE)
    y = public_causal_conv1d(x, weight, activation="silu", impl="triton")
    y_ref = reference.causal_conv1d(x.double(), weight.double(), activation="silu")
    assert rel_err(y, y_ref) < 1e-6


@tiny
def test_a_sequence_too_long_for_32_bit_offsets_is_refused(monkeypatch):
    x = torch.randn(1, 4, 7, device=DEVICE)
    offsets_limit(monkeypatch, 8)
    with pytest.raises(ValueError, match=r"x of shape .* 32-bit .* impl='reference'"):
        kernels.causal_conv1d(x, torch.randn(4, 4, device=DEVICE), activation="silu")


@tiny
@pytest.mark.parametrize("width, bias, activation", [(4, True, "silu"), (3, False, None)])
def test_update_matches_the_reference_step(width, bias, activation):
    # 6 channels in blocks of 4: a ragged last block
    check_update(2, 6, width, torch.float32, bias=bias, activation=activation,
                 label=f"cpu conv update w{width} bias={bias} {activation}")  # fmt: skip


@tiny
def test_update_in_bfloat16_and_from_zeros_reproduces_the_convolution():
    check_update(1, 5, 4, torch.bfloat16, label="cpu conv update bf16")
    check_update(2, 5, 4, torch.float32, state_dtype=torch.bfloat16, strided_state=True,
                 label="cpu conv update fp32 x, bf16 strided window")  # fmt: skip
    x = torch.randn(2, 7, 9, device=DEVICE)
    weight, bias = torch.randn(7, 4, device=DEVICE), torch.randn(7, device=DEVICE)
    window = torch.zeros(2, 7, 4, device=DEVICE)
    with torch.no_grad():
        steps = [
            kernels.causal_conv1d_update(window, x[:, :, t], weight, bias, activation="silu")
            for t in range(x.shape[2])
        ]
    y_ref = reference.causal_conv1d(x.double(), weight.double(), bias.double(), activation="silu")
    assert rel_err(torch.stack(steps, -1), y_ref) < 1e-6
    assert torch.equal(window, x[:, :, -4:])  # the last w inputs, oldest first


@tiny
def test_public_update_dispatches_to_triton():
    window = torch.randn(2, 4, 4, device=DEVICE)
    expected = window.double()
    x, weight = torch.randn(2, 4, device=DEVICE), torch.randn(4, 4, device=DEVICE)
    with torch.no_grad():
        y = public_causal_conv1d_update(window, x, weight, activation="silu", impl="triton")
    y_ref = reference.causal_conv1d_update(expected, x.double(), weight.double(), None, "silu")
    assert rel_err(y, y_ref) < 1e-6 and torch.equal(window.double(), expected)


@tiny
def test_update_refuses_to_record_a_gradient():
    weight = torch.randn(3, 4, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="no gradient"):
        kernels.causal_conv1d_update(
            torch.zeros(1, 3, 4, device=DEVICE), torch.randn(1, 3, device=DEVICE), weight
        )


# -- GPU: compiled, realistic and odd shapes ----------------------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape, channels_last",
    [
        ((8, 1536, 2048, 4), True),  # Mamba-130m block, x as the block passes it
        ((2, 1536, 2048, 4), False),
        ((3, 200, 1001, 4), True),  # ragged tiles
        ((2, 96, 777, 3), False),  # odd width
    ],
)
def test_gpu_matches_reference(shape, channels_last, dtype):
    check(*shape, dtype, channels_last=channels_last, seed=sum(shape),
          label=f"gpu causal_conv1d {shape} channels_last={channels_last} {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_slice_of_a_projection_with_rows_8_times_odd_apart(dtype):
    # Mamba-2-130m's xBC: 1792 channels of in_proj's 3352-wide rows (8 · 419): the forward is
    # told the stride is a multiple of 8, which Triton cannot see (a wrong hint misaligns loads)
    check(2, 1792, 2048, 4, dtype, row_width=3352, seed=3352,
          label=f"gpu causal_conv1d xBC slice of rows 3352 apart {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 3072, 4), (1, 1536, 4), (3, 200, 4), (2, 97, 3)])
def test_gpu_update_matches_reference(shape, dtype):
    check_update(*shape, dtype, steps=5, seed=sum(shape),
                 label=f"gpu causal_conv1d_update {shape} {dtype}")  # fmt: skip
    check_update(*shape, dtype, steps=2, seed=sum(shape) + 1, state_dtype=torch.bfloat16,
                 strided_state=True,
                 label=f"gpu causal_conv1d_update {shape} {dtype}, bf16 strided window")  # fmt: skip
