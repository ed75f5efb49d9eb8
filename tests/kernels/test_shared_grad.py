"""split_sharing_grad: its gradients are torch.split's, and a consumer's slot is used in place.

The yardstick is the same computation through ``torch.split`` (whose backward concatenates), on
fresh random inputs; the consumers below write their gradient where ``grad_slot`` says, the way
the Triton kernels' backwards do.
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels.shared_grad import grad_slot, place_grad, split_sharing_grad

SIZES = [3, 5, 2]
writes: list[tuple[int, bool]] = []  # SlotScale's backward: (where it wrote, whether a slot)


class SlotScale(torch.autograd.Function):
    """y = 3x; its backward writes ∂L/∂x into x's slot when there is one (and records where)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 3 * x

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        slot = grad_slot(x)
        dx = slot if slot is not None else torch.empty_like(x)
        torch.mul(grad_y, 3, out=dx)
        writes.append((dx.data_ptr(), slot is not None))
        return dx


class CastingScale(SlotScale):
    """y = 3x, its gradient computed in float64 and placed (cast) with ``place_grad``."""

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        dx = place_grad(x, 3 * grad_y.double())
        writes.append((dx.data_ptr(), dx.dtype == x.dtype))
        return dx


def consume(pieces, weights):
    """A loss using the pieces through views into a slot writer, and twice (two gradients
    autograd sums into a fresh tensor, which the split copies in)."""
    a, b, c = pieces
    loss = (SlotScale.apply(a.transpose(0, 1)).transpose(0, 1) * weights[0]).sum()
    loss = loss + (SlotScale.apply(b.unflatten(-1, (1, 5))).flatten(-2) * weights[1]).sum()
    loss = loss + (b.sin() * weights[1]).sum()  # b's second use: its gradient is summed
    return loss + 0 * c.sum() if c is not None else loss


def split_grad(split, t, weights):
    t = t.detach().requires_grad_()
    (grad,) = torch.autograd.grad(consume(split(t * 1), weights), t)
    return grad


@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_are_torch_splits(seed):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(4, 6, sum(SIZES), generator=gen)
    weights = [torch.randn(4, 6, n, generator=gen) for n in SIZES]
    shared = split_grad(lambda u: split_sharing_grad(u, SIZES, -1), t, weights)
    plain = split_grad(lambda u: u.split(SIZES, -1), t, weights)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-6)


def test_a_slot_writer_writes_into_the_gradient_itself(monkeypatch):
    t = torch.randn(2, 7, sum(SIZES), requires_grad=True) * 1  # not a leaf: its hook sees ∂L/∂t
    a, b, c = split_sharing_grad(t, SIZES, -1)
    loss = SlotScale.apply(a.transpose(1, 2)).sum() + (c * 2).sum()
    seen = {}
    t.register_hook(lambda g: seen.__setitem__("grad", g))
    writes.clear()
    empty = torch.empty_strided  # uninitialised memory, made visible: every buffer starts as NaN
    monkeypatch.setattr(torch, "empty_strided", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    loss.backward()
    (where, had_slot), grad = writes[0], seen["grad"]
    assert had_slot
    assert where == grad.data_ptr(), "a's slot is the start of the gradient buffer: no copy"
    expected = torch.cat([torch.full_like(a, 3), torch.zeros_like(b), torch.full_like(c, 2)], -1)
    assert torch.equal(grad, expected)  # b unused: zeros, not the buffer's garbage


def test_each_slot_is_handed_out_once_per_backward_pass():
    t = torch.randn(3, sum(SIZES), requires_grad=True)
    a, _, _ = split_sharing_grad(t * 1, SIZES, -1)
    loss = SlotScale.apply(a).sum() + 2 * SlotScale.apply(a.view(3, 3)).sum()
    writes.clear()
    loss.backward()
    assert sorted(had for _, had in writes) == [False, True]
    assert torch.equal(t.grad[:, :3], torch.full((3, 3), 9.0))


def test_a_second_backward_gets_a_fresh_buffer():
    t = torch.randn(3, sum(SIZES), requires_grad=True)
    a, b, c = split_sharing_grad(t * 1, SIZES, -1)
    loss = SlotScale.apply(a).sum() + (b * c.sum()).sum()
    first = torch.autograd.grad(loss, t, retain_graph=True)[0]
    second = torch.autograd.grad(loss, t)[0]
    assert first.data_ptr() != second.data_ptr()
    assert torch.equal(first, second)


def test_place_grad_casts_into_the_slot():
    t = torch.randn(2, sum(SIZES), dtype=torch.float32, requires_grad=True)
    u = t * 1
    a, b, _ = split_sharing_grad(u, SIZES, -1)
    seen = {}
    u.register_hook(lambda g: seen.__setitem__("grad", g))
    writes.clear()
    (CastingScale.apply(a).sum() + b.sum()).backward()
    in_place = [(seen["grad"].data_ptr(), True)]
    assert writes == in_place, "cast into a's slot, not a new tensor"
    assert t.grad.dtype == torch.float32
    assert torch.equal(
        t.grad, torch.cat([torch.full((2, 3), 3.0), torch.ones(2, 5), torch.zeros(2, 2)], -1)
    )


def test_without_gradients_it_is_a_plain_split():
    t = torch.randn(2, sum(SIZES))
    pieces = split_sharing_grad(t, SIZES, -1)
    assert all(p.grad_fn is None for p in pieces)
    assert [p.shape[-1] for p in pieces] == SIZES
    assert grad_slot(pieces[0]) is None


def test_a_saved_copy_gets_no_slot():
    # A saved-tensor hook (offloading, say) hands the backward a copy: its layout says nothing
    # about the split's buffer, so it must get no slot, and the gradient must still be right.
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(4, 6, sum(SIZES), generator=gen)
    weights = [torch.randn(4, 6, n, generator=gen) for n in SIZES]
    plain = split_grad(lambda u: u.split(SIZES, -1), t, weights)
    writes.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda x: x.clone(), lambda x: x):
        shared = split_grad(lambda u: split_sharing_grad(u, SIZES, -1), t, weights)
    assert not any(had for _, had in writes)
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-6)


def test_a_pass_that_stops_before_the_split_leaves_nothing_behind():
    t = torch.randn(3, sum(SIZES), requires_grad=True)
    a, b, _ = split_sharing_grad(t * 1, SIZES, -1)
    loss = SlotScale.apply(a).sum() + (b * 2).sum()
    (first,) = torch.autograd.grad(loss, a, retain_graph=True)  # never reaches the split
    kept = first.clone()
    loss.backward()
    assert torch.equal(first, kept), "the next pass must not write into a returned gradient"
    assert torch.equal(t.grad[:, :3], torch.full((3, 3), 3.0))


def test_torch_func_transforms_get_a_plain_split():
    def loss(t):
        a, b, c = split_sharing_grad(t * 1, SIZES, -1)
        return a.sin().sum() + (b**2).sum() + 0 * c.sum()

    t = torch.randn(3, sum(SIZES))
    expected = torch.cat([t[:, :3].cos(), 2 * t[:, 3:8], torch.zeros(3, 2)], -1)
    torch.testing.assert_close(torch.func.grad(loss)(t), expected)
