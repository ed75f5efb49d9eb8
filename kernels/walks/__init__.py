"""Walks over a set of tokens: gather the tokens in each walk's order, merge the walks back.

Vision Mamba models scan an image's tokens along several walks (Vim: forward and backward;
VMamba: rows and columns, each both ways). When every walk visits every token once, the walks
are one gather into a (b, k·c, s) sequence for a single stacked scan, and the merge one gather
back with a sum over the walks; these two ops are those gathers, fused with the sum, the
average and the output gate.

Both public functions check their inputs, then run the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_ndim, require_shape
from ..causal_conv1d import check_conv_weights


def _check_plan(op: str, order: torch.Tensor, inverse: torch.Tensor, tokens: int) -> None:
    for name, t in (("order", order), ("inverse", inverse)):
        require_ndim(op, name, t, {2: "(k, steps)" if name == "order" else "(k, tokens)"})
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: {name} holds indices, int64 or int32; got {t.dtype}")
    walks, steps = order.shape
    require_shape(op, "inverse", inverse, (walks, tokens), "(k, tokens)")
    if steps < tokens:
        raise ValueError(
            f"{op}: order has {steps} steps per walk, fewer than the {tokens} tokens; every walk "
            "visits every token once (plus padding steps)"
        )


def gather_walks(
    x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, impl: str | None = None
) -> torch.Tensor:
    """Tokens x in the order of each walk::

        walks[b, j, c, t] = x[b, c, order[j, t]]      (0 where order[j, t] == l: padding)

    Shapes: x (b, c, l) tokens; order (k, s) with s >= l: the token walk j visits at step t, or
    l for a padding step; inverse (k, l): the step at which walk j visits token i, so that
    ``order[j, inverse[j, i]] == i``. Returns walks (b, k, c, s), contiguous, in x's dtype.

    The plan must be a permutation per walk, padded at the end with l (what
    ``Walker.token_orders`` builds and checks): the Triton backward is ``merge_walks``, the
    adjoint only then.
    """
    op = "gather_walks"
    require_ndim(op, "x", x, {3: "(b, c, l)"})
    _check_plan(op, order, inverse, x.shape[2])
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, order, inverse)


def merge_walks(
    y: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    scale: float = 1.0,
    gate: torch.Tensor | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """The walks' outputs back at their tokens, summed over the walks::

        out[b, c, i] = scale · Σ_j y[b, j, c, inverse[j, i]]
        out = out · silu(gate)                                  (with ``gate``)

    Shapes: y (b, k, c, s) per walk and step (``gather_walks``' layout); order (k, s) and
    inverse (k, l) the plan of :func:`gather_walks`; gate (b, c, l). Returns out (b, c, l) in
    y's dtype, summed in fp32; ``scale = 1 / k`` averages the walks. Steps past the tokens are
    never read. The merge is gather_walks' adjoint, so its gradient with respect to y is
    ``scale · gather_walks(grad · silu(gate))``.
    """
    op = "merge_walks"
    require_ndim(op, "y", y, {4: "(b, k, c, steps)"})
    batch, walks, channels, steps = y.shape
    tokens = inverse.shape[-1] if inverse.dim() == 2 else -1
    _check_plan(op, order, inverse, tokens)
    require_shape(op, "order", order, (walks, steps), "(k, steps) as y's")
    require_shape(op, "gate", gate, (batch, channels, tokens), "(b, c, l)")
    kernel = mambaverse.get_kernel(op, impl=impl, device=y.device, dtype=y.dtype)
    return kernel(y, order, inverse, scale=scale, gate=gate)


def conv_walks(
    x: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Each walk's causal depthwise convolution, read from the tokens in their walk's order::

        walks = gather_walks(x, order, inverse)                          (b, k, c, s)
        u[b, j, c, t] = Σ_{q<w} weight[j·c + c', q] · walks[b, j, c', t-(w-1)+q] + bias[j·c + c']
        u = silu(u)                                                      (activation="silu")

    (c' the channel, walks zero before step 0 and at padding steps): the same function as
    ``causal_conv1d(gather_walks(x, order, inverse).flatten(1, 2), weight, bias, activation)``,
    each walk with its own filters. Shapes: x (b, c, l) tokens; order (k, s), inverse (k, l) as
    :func:`gather_walks`; weight (k·c, w), bias (k·c,). Returns u (b, k, c, s), contiguous, in
    x's dtype. The Triton implementation never writes the walks when no gradient is recorded.
    """
    op = "conv_walks"
    require_ndim(op, "x", x, {3: "(b, c, l)"})
    _check_plan(op, order, inverse, x.shape[2])
    check_conv_weights(op, weight, bias, activation, order.shape[0] * x.shape[1])
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, order, inverse, weight, bias=bias, activation=activation)
