"""Depthwise causal 1-D convolution (the short convolution in front of every Mamba scan).

Both public functions check their inputs, then run the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_ndim, require_shape, require_state

ACTIVATIONS = (None, "silu", "swish")  # "swish" is another name for silu


def check_conv_weights(
    op: str, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None, dim: int
) -> None:
    require_ndim(op, "weight", weight, {2: "(d, w)"})
    require_shape(op, "weight", weight, (dim, weight.shape[1]), "(d, w)")
    if weight.shape[1] < 1:
        raise ValueError(f"{op}: weight has width 0; a causal filter needs w >= 1 taps")
    require_shape(op, "bias", bias, (dim,), "(d,)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Depthwise causal convolution over time: each channel has its own filter of width w.

    ::

        y[b, d, t] = Σ_{k<w} weight[d, k] · x[b, d, t-(w-1)+k] + bias[d]   (x[..., j<0] = 0)
        y = silu(y)                                                       (activation="silu")

    Shapes: x (b, d, l); weight (d, w); bias (d,). Returns y (b, d, l) in x's dtype.
    ``weight`` is ``nn.Conv1d(d, d, w, groups=d).weight[:, 0]``.
    """
    op = "causal_conv1d"
    require_ndim(op, "x", x, {3: "(b, d, l)"})
    check_conv_weights(op, weight, bias, activation, x.shape[1])
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, weight, bias=bias, activation=activation)


def causal_conv1d_update(
    conv_state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """One decoding step of :func:`causal_conv1d`: updates ``conv_state`` in place.

    ``conv_state`` holds each channel's last w inputs, oldest first. The step drops the oldest,
    appends x, and returns the convolution over the window (as the causal-conv1d package)::

        conv_state ← [conv_state[..., 1:], x]
        y = Σ_k weight[:, k] · conv_state[..., k] + bias,  then silu if asked

    Shapes: conv_state (b, d, w); x (b, d); weight (d, w); bias (d,). Returns y (b, d).
    Starting from zeros, stepping through x reproduces :func:`causal_conv1d`.
    """
    op = "causal_conv1d_update"
    require_ndim(op, "x", x, {2: "(b, d)"})
    batch, dim = x.shape
    check_conv_weights(op, weight, bias, activation, dim)
    require_shape(op, "conv_state", conv_state, (batch, dim, weight.shape[1]), "(b, d, w)")
    require_state(op, "conv_state", conv_state)
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(conv_state, x, weight, bias=bias, activation=activation)
