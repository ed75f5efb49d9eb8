"""Gathering a token sequence into walks and merging the walks back, in plain PyTorch.

With tokens x (b, c, l) and a walk plan — order (k, s): the token walk k visits at step t, l for
a padding step; inverse (k, l): the step at which walk k visits token i —

    walks[b, j, c, t] = x[b, c, order[j, t]]                 (0 where order[j, t] == l)
    out[b, c, i]      = scale · Σ_j y[b, j, c, inverse[j, i]]   (· silu(gate[b, c, i]))

Both are ``torch.gather``; autograd's scatter-add gives their gradients. ``conv_walks`` is the
gather, then the causal convolution of the stacked walks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inputs import compute_dtype
from ..causal_conv1d.reference import causal_conv1d


def gather_walks(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.gather_walks` (see there)."""
    batch, channels, _ = x.shape
    walks, steps = order.shape
    padded = F.pad(x, (0, 1))  # (b, c, l + 1): index l reads the zero column
    return torch.gather(
        padded[:, None].expand(batch, walks, channels, -1),
        3,
        order[None, :, None].expand(batch, walks, channels, steps),
    )


def merge_walks(
    y: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    scale: float = 1.0,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.merge_walks` (see there)."""
    batch, walks, channels, _ = y.shape
    tokens = inverse.shape[1]
    dtype = compute_dtype(y, gate)  # fp32 for half inputs, as the Triton kernel sums
    visits = torch.gather(y, 3, inverse[None, :, None].expand(batch, walks, channels, tokens))
    out = visits.to(dtype).sum(1) * scale  # (b, c, l)
    if gate is not None:
        out = out * F.silu(gate.to(dtype))
    return out.to(y.dtype)


def conv_walks(
    x: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.conv_walks` (see there)."""
    walks = gather_walks(x, order, inverse)  # (b, k, c, s)
    return causal_conv1d(walks.flatten(1, 2), weight, bias, activation).view(walks.shape)
