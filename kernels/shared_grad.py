"""A split whose backward concatenates nothing: the consumers write their gradients in place.

``torch.split``'s backward is a ``cat`` of the pieces' gradients: one more pass over the whole
tensor. In the Mamba-2 block that is two passes per layer (in_proj's output split into z, xBC,
dt; the convolution's output into x, B, C), ~3 % of a training step on an H100. mamba_ssm avoids
them by fusing the block into one autograd function; here the split stays a split, and the
kernels that consume its pieces ask where to write their gradient:

    z, xBC, dt = split_sharing_grad(in_proj(u), [d_inner, conv_dim, nheads], dim=-1)
    ...
    # in a consumer's backward, x being (a view of) one of the pieces:
    dx = grad_slot(x)                             # write ∂L/∂x here, or
    if dx is None:
        dx = torch.empty_like(x)                  # where it would have gone anyway
    return place_grad(x, dx)

``grad_slot(x)`` follows x's autograd history back through view operations (transpose, view,
unflatten, ...) to the split, and hands out x's region of one buffer laid out as the split's input,
once per backward pass. The split's backward then finds each piece's gradient already in place
and returns the buffer; a gradient that arrives anywhere else (a consumer that does not ask, or
two consumers whose gradients autograd has summed) is copied in, and an unused piece is zeroed,
so the result is always the concatenation, with or without the consumers' help.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Autograd nodes of operations that only reinterpret their input's memory; grad_slot follows them.
VIEW_NODES = frozenset(
    {
        "AliasBackward0",
        "PermuteBackward0",
        "ReshapeAliasBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "TBackward0",
        "TransposeBackward0",
        "UnsafeViewBackward0",
        "UnsqueezeBackward0",
        "ViewBackward0",
    }
)
MAX_VIEW_HOPS = 8


class _Slots:
    """The split input's layout and, during a backward pass, the buffer its gradient goes in."""

    def __init__(self, t: torch.Tensor, pieces: tuple[torch.Tensor, ...]) -> None:
        self.shape, self.offset = t.shape, t.storage_offset()  # t is contiguous
        self.storage = t.untyped_storage().data_ptr()
        self.dtype, self.device = t.dtype, t.device
        # Each piece's place in the buffer: (storage offset relative to t's, shape, strides).
        self.pieces = [(p.storage_offset() - self.offset, p.shape, p.stride()) for p in pieces]
        self.buffer: torch.Tensor | None = None
        self.handed_out = [False] * len(pieces)

    def piece_view(self, index: int) -> torch.Tensor:
        offset, shape, stride = self.pieces[index]
        assert self.buffer is not None
        return self.buffer.as_strided(shape, stride, self.buffer.storage_offset() + offset)

    def take_buffer(self) -> torch.Tensor:
        """The buffer of this backward pass (made on first use), laid out as the split input;
        forgotten when the pass ends, even one that never reaches the split's own backward."""
        if self.buffer is None:
            self.buffer = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            torch.autograd.Variable._execution_engine.queue_callback(self.reset)
        return self.buffer

    def reset(self) -> None:
        self.buffer, self.handed_out = None, [False] * len(self.handed_out)


class _SplitSharingGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: tuple[int, ...], dim: int):
        pieces = t.split(sizes, dim)
        ctx.slots = _Slots(t, pieces)
        ctx.set_materialize_grads(False)  # an unused piece's gradient: None, zeroed in place
        return pieces

    @staticmethod
    def backward(ctx, *grads):
        slots: _Slots = ctx.slots
        buffer = slots.take_buffer()
        for index, grad in enumerate(grads):
            place = slots.piece_view(index)
            if grad is None:
                place.zero_()
            elif grad.data_ptr() != place.data_ptr() or _covers(grad) != _covers(place):
                place.copy_(grad)
        slots.reset()  # the next pass (retain_graph) gets a fresh buffer: this one is the gradient
        return buffer, None, None


def _footprint(offset: int, shape: Sequence[int], stride: Sequence[int]) -> tuple | None:
    """Which elements of a storage a view covers, as (offset, ((stride, size), ...)) with size-1
    dimensions dropped and contiguous ones merged; None if it revisits an element (a stride 0 or
    two dimensions with one stride)."""
    dims = sorted((st, size) for st, size in zip(stride, shape) if size != 1)
    merged: list[tuple[int, int]] = []
    for st, size in dims:
        if st == 0 or (merged and merged[-1][0] == st):
            return None
        if merged and merged[-1][0] * merged[-1][1] == st:
            merged[-1] = (merged[-1][0], merged[-1][1] * size)
        else:
            merged.append((st, size))
    return offset, tuple(merged)


def _covers(t: torch.Tensor) -> tuple | None:
    return _footprint(t.storage_offset(), t.shape, t.stride())


def split_sharing_grad(
    t: torch.Tensor, sizes: list[int] | tuple[int, ...], dim: int = -1
) -> tuple[torch.Tensor, ...]:
    """``t.split(sizes, dim)`` (views of t) whose backward writes the pieces' gradients into one
    buffer laid out as t, where consumers calling :func:`grad_slot` have already written theirs,
    instead of concatenating them. Without gradients, while compiling, inside a ``torch.func``
    transform or for a non-contiguous t, a plain split."""
    if (
        not (torch.is_grad_enabled() and t.requires_grad)
        or torch.compiler.is_compiling()
        or not t.is_contiguous()  # (the buffer is laid out as t; Mamba-2's inputs are contiguous)
        or torch._C._functorch.is_functorch_wrapped_tensor(t)  # torch.func's grad, vmap, ...
    ):
        return t.split(list(sizes), dim)
    return _SplitSharingGrad.apply(t, tuple(sizes), dim)


def _piece_of(x: torch.Tensor) -> tuple[_Slots, int] | None:
    """The split (slots, piece index) whose piece x is, through view operations only."""
    node, hops = x.grad_fn, 0
    while node is not None and hops <= MAX_VIEW_HOPS:
        if type(node).__name__ == "_SplitSharingGradBackward":
            return node.slots, x.output_nr  # x is a piece itself
        if type(node).__name__ not in VIEW_NODES or len(node.next_functions) != 1:
            return None
        parent, output_index = node.next_functions[0]
        if parent is not None and type(parent).__name__ == "_SplitSharingGradBackward":
            return parent.slots, output_index
        node, hops = parent, hops + 1
    return None


def grad_slot(x: torch.Tensor) -> torch.Tensor | None:
    """Where to write ∂L/∂x (x's shape and strides) when x is a piece of a
    :func:`split_sharing_grad`, or a view of one, whose slot this backward pass has not handed out
    yet; else None (allocate as usual)."""
    if x.grad_fn is None:
        return None
    found = _piece_of(x)
    if found is None:
        return None
    slots, index = found
    offset = x.storage_offset() - slots.offset  # in the split input's layout
    piece = _footprint(*slots.pieces[index])
    if (
        slots.handed_out[index]
        or x.dtype != slots.dtype
        or x.untyped_storage().data_ptr() != slots.storage  # e.g. a saved-tensor hook's copy
        or piece is None
        or _footprint(offset, x.shape, x.stride()) != piece  # exactly its piece's elements
    ):
        return None
    slots.handed_out[index] = True
    buffer = slots.take_buffer()
    return buffer.as_strided(x.shape, x.stride(), offset)


def place_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂L/∂x in x's dtype: cast into x's slot (:func:`grad_slot`) when it has one, so that the
    split's backward need not copy it again; else ``grad.to(x.dtype)``."""
    if grad.dtype == x.dtype:
        return grad  # where the kernel wrote it (its slot, if it asked for one)
    slot = grad_slot(x)
    if slot is None:
        return grad.to(x.dtype)
    return slot.copy_(grad)
