"""Mamba-2's output norm: RMSNorm over groups of channels, gated by silu(z), as one op.

The public function checks its inputs, then runs the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_multiple, require_shape, whole_number


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    group_size: int | None = None,
    eps: float = 1e-5,
    norm_before_gate: bool = False,
    impl: str | None = None,
) -> torch.Tensor:
    """RMSNorm of each group of ``group_size`` channels, gated by silu(z), in float32::

        norm_before_gate=False (Mamba-2):  v = x · silu(z)    y = v / sqrt(mean_group(v²) + eps) · w
        norm_before_gate=True:             y = x / sqrt(mean_group(x²) + eps) · w · silu(z)

    Shapes: x (..., d); z as x; weight (d,); ``group_size`` divides d (default d: one group).
    Returns y (..., d) in x's dtype, rounded once (as mamba_ssm's fused ``RMSNormGated``; the
    weight multiplies in float32).
    """
    op = "gated_rms_norm"
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be (..., d) with d > 0, got shape {tuple(x.shape)}")
    dim = x.shape[-1]
    require_shape(op, "z", z, tuple(x.shape), "x's shape")
    require_shape(op, "weight", weight, (dim,), "(d,)")
    group_size = dim if group_size is None else whole_number(op, "group_size", group_size, 1)
    require_multiple(op, "d", dim, "group_size", group_size)
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, z, weight, group_size, eps=eps, norm_before_gate=norm_before_gate)
