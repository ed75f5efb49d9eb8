"""A residual add fused with the RMSNorm after it: the pre-norm block's "add -> norm".

The public function checks its inputs, then runs the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, the model's
``kernels`` config, or registry.yaml's default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_shape


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_dtype: torch.dtype | None = None,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream's next value and its RMSNorm, in one pass over the rows::

        s = x + residual                          (s = x without a residual), in float32
        y = s / sqrt(mean(s², last dim) + eps) · weight

    Shapes: x (..., d); residual as x; weight (d,). Returns (y, s): y in weight's dtype, s (the
    new residual stream) in ``residual_dtype`` — by default the dtype of x + residual. y is
    normalised from the float32 sum, before s is rounded to its dtype (as mamba_ssm's fused
    ``rms_norm_fn(x, weight, None, residual=residual, prenorm=True)``).
    """
    op = "add_rms_norm"
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be (..., d) with d > 0, got shape {tuple(x.shape)}")
    dim = x.shape[-1]
    require_shape(op, "weight", weight, (dim,), "(d,)")
    require_shape(op, "residual", residual, tuple(x.shape), "x's shape")
    residual_dtype_given = residual_dtype
    if residual_dtype is None:
        residual_dtype = (
            x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        )
    if not isinstance(residual_dtype, torch.dtype) or not residual_dtype.is_floating_point:
        given = "x + residual's dtype" if residual_dtype_given is None else "residual_dtype"
        raise TypeError(
            f"{op}: {given} must be a float torch.dtype, got {residual_dtype!r} "
            "(give float x and residual, or residual_dtype=torch.float32)"
        )
    kernel = mambaverse.get_kernel(op, impl=impl, device=x.device, dtype=x.dtype)
    return kernel(x, residual, weight, eps=eps, residual_dtype=residual_dtype)
