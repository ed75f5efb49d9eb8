"""Depthwise causal convolution over time in plain PyTorch, and its rolling-window decoding step.

Math, per batch b and channel d, with kernel width w (the newest input meets weight[:, w-1]):

    y_t = Σ_{k<w} weight[d, k] · x_{t-(w-1)+k} + bias[d]      (x_j = 0 for j < 0)

then silu(y) when asked. The whole sequence is one ``F.conv1d`` with d groups; the decoding step
keeps the last w inputs of each channel in ``conv_state``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inputs import compute_dtype


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.causal_conv1d` (see there)."""
    dtype = compute_dtype(x, weight)
    dim, width = weight.shape
    if x.shape[-1] == 0:  # no step: F.conv1d refuses an input shorter than the filter
        return x.new_empty(x.shape)
    # Left padding of w-1 zeros makes output t see inputs t-(w-1) .. t only.
    y = F.conv1d(
        F.pad(x.to(dtype), (width - 1, 0)),
        weight.to(dtype)[:, None, :],  # (d, 1, w): one filter per channel
        None if bias is None else bias.to(dtype),
        groups=dim,
    )
    return _activate(y, activation).to(x.dtype)


def causal_conv1d_update(
    conv_state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.causal_conv1d_update`."""
    dtype = compute_dtype(x, weight)
    # Drop the oldest input, append the new one: the window is x_{t-w+1} .. x_t, newest last.
    window = torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1)
    conv_state.copy_(window)
    y = (window.to(dtype) * weight.to(dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(dtype)
    return _activate(y, activation).to(x.dtype)
