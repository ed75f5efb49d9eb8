"""Gathering tokens into walks and merging them back: the reference against loops over every
index, the two ops adjoint on the plans of real scans, and the public functions' errors."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import conv_walks, gather_walks, merge_walks
from mambaverse.plugins._vision.walker import Walker

F64 = torch.float64


def random_plan(walks: int, tokens: int, steps: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Each walk a random permutation of the tokens, padded with ``tokens`` to ``steps``."""
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(tokens, generator=gen) for _ in range(walks)])
    order = torch.nn.functional.pad(perms, (0, steps - tokens), value=tokens)
    return order, perms.argsort(dim=1)


def gather_loops(x, order):
    batch, channels, tokens = x.shape
    out = torch.zeros(batch, order.shape[0], channels, order.shape[1], dtype=x.dtype)
    for j, t in torch.cartesian_prod(*(torch.arange(n) for n in order.shape)).tolist():
        if order[j, t] < tokens:
            out[:, j, :, t] = x[:, :, order[j, t]]
    return out


def merge_loops(y, inverse, scale, gate):
    batch, _, channels, _ = y.shape
    out = torch.zeros(batch, channels, inverse.shape[1], dtype=y.dtype)
    for j, i in torch.cartesian_prod(*(torch.arange(n) for n in inverse.shape)).tolist():
        out[:, :, i] += y[:, j, :, inverse[j, i]]
    out = out * scale
    return out if gate is None else out * gate * torch.sigmoid(gate)


@pytest.mark.parametrize("walks, tokens, steps", [(2, 7, 7), (4, 5, 8), (1, 3, 16)])
def test_reference_matches_the_loops(walks, tokens, steps):
    gen = torch.Generator().manual_seed(walks * tokens)
    order, inverse = random_plan(walks, tokens, steps, seed=steps)
    x = torch.randn(2, 3, tokens, generator=gen, dtype=F64)
    assert torch.equal(gather_walks(x, order, inverse), gather_loops(x, order))
    y = torch.randn(2, walks, 3, steps, generator=gen, dtype=F64)
    gate = torch.randn(2, 3, tokens, generator=gen, dtype=F64)
    for scale, g in ((1.0, None), (1 / walks, gate)):
        out = merge_walks(y, order, inverse, scale=scale, gate=g)
        assert torch.allclose(out, merge_loops(y, inverse, scale, g), rtol=1e-14, atol=1e-14)


def conv_walks_loops(x, order, weight, bias):
    """Walk j's channel c at step t: Σ_q weight[j·c + c, q] · x at the token the walk visits at
    step t - (w-1) + q (nothing before step 0 or at padding steps), + bias, then silu."""
    batch, channels, tokens = x.shape
    walks, steps = order.shape
    width = weight.shape[1]
    out = torch.zeros(batch, walks, channels, steps, dtype=x.dtype)
    for j, c, t in torch.cartesian_prod(
        *(torch.arange(n) for n in (walks, channels, steps))
    ).tolist():
        total = bias[j * channels + c].expand(batch).clone()
        for q in range(width):
            step = t - (width - 1) + q
            if step >= 0 and order[j, step] < tokens:
                total += weight[j * channels + c, q] * x[:, c, order[j, step]]
        out[:, j, c, t] = total * torch.sigmoid(total)
    return out


def test_conv_walks_reference_matches_the_loops():
    gen = torch.Generator().manual_seed(5)
    order, inverse = random_plan(2, 6, 8, seed=5)
    x = torch.randn(2, 3, 6, generator=gen, dtype=F64)
    weight, bias = (
        torch.randn(6, 4, generator=gen, dtype=F64),
        torch.randn(6, generator=gen, dtype=F64),
    )
    out = conv_walks(x, order, inverse, weight, bias, activation="silu")
    assert torch.allclose(out, conv_walks_loops(x, order, weight, bias), rtol=1e-14, atol=1e-14)


def test_conv_walks_filters_are_one_row_per_walk_and_channel():
    order, inverse = random_plan(2, 6, 8, seed=5)
    with pytest.raises(ValueError, match=r"conv_walks: weight must have shape \(d, w\) = \(6, 4\)"):
        conv_walks(torch.randn(2, 3, 6), order, inverse, torch.randn(3, 4))


@pytest.mark.parametrize(
    ("scan", "grid", "cls_index"), [("bidirectional", (3, 4), 6), ("cross2d", (4, 3), None)]
)
def test_gather_and_merge_are_adjoint_on_a_scans_plan(scan, grid, cls_index):
    """<gather(x), w> == <x, merge(w)> for a real scan's padded plan: what lets each op's
    backward be the other (the Triton kernels' autograd)."""
    order, inverse = Walker(scan).token_orders(grid, cls_index, torch.device("cpu"), 16)
    tokens = inverse.shape[1]
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(2, 5, tokens, generator=gen, dtype=F64)
    w = torch.randn(2, order.shape[0], 5, order.shape[1], generator=gen, dtype=F64)
    lhs = (gather_walks(x, order, inverse) * w).sum()
    rhs = (x * merge_walks(w, order, inverse)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-13)
    # and merging the walks of x, averaged, gives x back
    back = merge_walks(gather_walks(x, order, inverse), order, inverse, scale=1 / order.shape[0])
    assert torch.allclose(back, x, rtol=1e-14)


def test_gradients():
    order, inverse = random_plan(2, 5, 8, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randn(2, 2, 3, 8, generator=gen, dtype=F64, requires_grad=True)
    gate = torch.randn(2, 3, 5, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gather_walks(t, order, inverse), (x,))
    merge = lambda a, g: merge_walks(a, order, inverse, scale=0.5, gate=g)  # noqa: E731
    assert torch.autograd.gradcheck(merge, (y, gate))


def test_bad_inputs_name_the_problem():
    order, inverse = random_plan(2, 5, 8, seed=0)
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"gather_walks: x must be \(b, c, l\)"):
        gather_walks(x[0], order, inverse)
    with pytest.raises(TypeError, match="order holds indices"):
        gather_walks(x, order.float(), inverse)
    with pytest.raises(ValueError, match=r"inverse must have shape \(k, tokens\) = \(2, 4\)"):
        gather_walks(x[..., :4], order, inverse)
    with pytest.raises(ValueError, match="fewer than the 5 tokens"):
        gather_walks(x, order[:, :4], inverse)
    y = torch.randn(2, 2, 3, 8)
    with pytest.raises(ValueError, match=r"order must have shape \(k, steps\) as y's = \(2, 7\)"):
        merge_walks(y[..., :7], order, inverse)
    with pytest.raises(ValueError, match=r"gate must have shape \(b, c, l\) = \(2, 3, 5\)"):
        merge_walks(y, order, inverse, gate=torch.randn(2, 3, 8))
