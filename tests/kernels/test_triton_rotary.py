"""Triton rotary embeddings against the reference, forward and gradient.

The float64 reference (checked against complex rotation in test_reference_rotary.py) runs on
the same rounded inputs. Angles in float32 are rounded where positions are large (ulp(4096) is
5e-4 rad), whoever computes them; so the tolerance is the larger of the dtype's and twice the
error of PyTorch's own float32 path (the reference run in float32) on the same inputs. Without
CUDA the kernel runs interpreted at tiny sizes: tiles of 4 positions (ragged last ones), padded
halves and kept channels.
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import apply_rotary as public_apply_rotary
from mambaverse.kernels.rotary import reference
from mambaverse.kernels.rotary import triton as kernels
from tests.kernels.triton_helpers import DEVICE, gpu, grads, rel_err, report, run_interpreted, tiny

TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_x(shape, dtype, layout, gen):
    """(B, heads, L, head_dim) in ``layout``: "bhld" contiguous, "blhd" a transposed view of
    (B, L, heads, head_dim) storage (as the attention mixer's projections), "qkv" the first third
    of fused (B, L, heads, 3 · head_dim) rows (not dense), "strided" channels two elements
    apart."""
    b, h, length, d = shape
    stored = {
        "blhd": (b, length, h, d),
        "qkv": (b, length, h, 3 * d),
        "strided": (b, h, length, 2 * d),
    }
    base = torch.randn(stored.get(layout, shape), generator=gen).to(dtype=dtype, device=DEVICE)
    if layout == "blhd":
        return base.transpose(1, 2)
    if layout == "qkv":
        return base[..., :d].transpose(1, 2)
    if layout == "strided":
        return base[..., ::2]
    return base


def check(shape, dtype, rotary_dim=None, layout="bhld", start=0, theta=1e4, seed=0, label="",
          scattered=False):  # fmt: skip
    """The rotation and its gradient against the float64 reference, x in ``layout``, positions
    start, start + 1, ... (``scattered``: random int32 positions below 70,000, every other
    element of a longer tensor)."""
    gen = torch.Generator().manual_seed(seed)
    rotary_dim = rotary_dim or shape[-1]
    x = make_x(shape, dtype, layout, gen).requires_grad_()
    if scattered:
        drawn = torch.randint(0, 70_000, (2 * shape[2],), generator=gen, dtype=torch.int32)
        positions = drawn.to(DEVICE)[::2]
    else:
        positions = torch.arange(start, start + shape[2], device=DEVICE)
    x64 = x.detach().double().requires_grad_()
    out = kernels.apply_rotary(x, positions, rotary_dim, theta)
    expected = reference.apply_rotary(x64, positions, rotary_dim, theta)
    torch_fp32 = reference.apply_rotary(x.detach().float(), positions, rotary_dim, theta)
    tol = max(TOL[dtype], 2 * rel_err(torch_fp32, expected))
    assert out.dtype == dtype and out.shape == x.shape
    if layout in ("bhld", "blhd"):  # a dense layout is kept
        assert out.stride() == x.stride()
    with torch.no_grad():  # the inference path: no autograd node
        assert torch.equal(kernels.apply_rotary(x, positions, rotary_dim, theta), out)
    upstream = [torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)]
    op = lambda impl: lambda t: impl.apply_rotary(t, positions, rotary_dim, theta)  # noqa: E731
    (dx,) = grads(op(kernels), [x], upstream)
    (dx_ref,) = grads(op(reference), [x64], upstream)
    assert dx.dtype == dtype
    errors = {"out": rel_err(out, expected), "dx": rel_err(dx, dx_ref)}
    report(label or f"apply_rotary {shape} {dtype} {layout}", errors, tol)


def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(dtype):
    # 9 positions in tiles of 4 (a ragged last one), 4 pairs
    check((2, 3, 9, 8), dtype, label=f"cpu apply_rotary {dtype}")


@tiny
def test_partial_rotation_in_the_projections_layout():
    """6 of 10 channels rotated (3 pairs padded to 4, 4 kept) on (B, L, heads, d) storage."""
    check(
        (1, 2, 7, 10), torch.float32, rotary_dim=6, layout="blhd", label="cpu apply_rotary partial"
    )


@tiny
def test_channels_not_adjacent_and_later_positions():
    check((2, 1, 5, 4), torch.float32, layout="strided", start=1000, theta=500.0,
          label="cpu apply_rotary strided")  # fmt: skip


@tiny
@pytest.mark.parametrize(
    ("head_dim", "rotary_dim"),
    [(6, None), (10, 4)],  # a padded half and nothing kept; 6 channels kept, padded to 8
)
def test_padded_halves_and_kept_channels(head_dim, rotary_dim):
    check((1, 2, 5, head_dim), torch.float16, rotary_dim=rotary_dim, layout="qkv",
          label=f"cpu apply_rotary d{head_dim} rd{rotary_dim} fp16")  # fmt: skip


@tiny
def test_one_token_at_scattered_positions():
    """Decoding: one position far into the sequence, then several in no order, int32 and
    strided."""
    check((3, 2, 1, 8), torch.float32, scattered=True, label="cpu apply_rotary one token")
    check((1, 2, 9, 8), torch.float32, scattered=True, layout="blhd",
          label="cpu apply_rotary scattered")  # fmt: skip


@tiny
def test_public_op_dispatches_to_triton():
    x = torch.randn(1, 2, 3, 8, device=DEVICE)
    positions = torch.arange(3, device=DEVICE)
    out = public_apply_rotary(x, positions, 8, 1e4, impl="triton")
    assert rel_err(out, reference.apply_rotary(x, positions, 8, 1e4)) < TOL[torch.float32]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "rotary_dim", "layout", "start"),
    [
        ((4, 12, 4096, 64), None, "blhd", 0),  # the bench Transformer-130m's q at 4k
        ((2, 8, 1000, 128), 64, "bhld", 0),  # half of each head, as Bamba
        ((3, 5, 77, 80), 40, "strided", 3),  # odd everything
        ((2, 4, 64, 64), None, "blhd", 65536),  # decoding far into a long context
        ((2, 32, 300, 96), None, "qkv", 0),  # a fused projection's slice, a padded half
    ],
)
def test_gpu_matches_reference(shape, rotary_dim, layout, start, dtype):
    check(shape, dtype, rotary_dim=rotary_dim, layout=layout, start=start,
          label=f"gpu apply_rotary {shape} rd={rotary_dim} {layout} from {start} {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
def test_gpu_decoding_batch_beyond_the_grid_axis_limit():
    """B · heads = 65,536 single tokens (a second grid axis would stop at 65,535)."""
    check((2048, 32, 1, 64), torch.bfloat16, scattered=True, label="gpu apply_rotary 65536 rows")
