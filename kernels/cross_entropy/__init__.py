"""Cross-entropy of logits against integer labels, one loss per row: a language model's loss.

The public function checks its inputs, then runs the implementation that
:func:`mambaverse.get_kernel` picks (``impl=`` argument, ``MAMBAVERSE_KERNELS``, or registry.yaml's
default for the device).
"""

from __future__ import annotations

import torch

import mambaverse

from .._inputs import require_integers_beside, require_ndim, require_shape, whole_number


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    impl: str | None = None,
) -> torch.Tensor:
    """Per-row cross-entropy of ``logits`` against ``labels``::

        loss_n = log Σ_v exp(x_{n,v}) − x_{n,y_n}              (0 where y_n = ignore_index)
        ∂loss_n / ∂x_{n,v} = softmax(x_n)_v − [v = y_n]         (0 where y_n = ignore_index)

    computed in float32 (float64 for float64 logits) whatever the logits' dtype, so bfloat16
    logits need no float32 copy; the gradient comes back in the logits' dtype.

    Shapes: logits (N, V) floating point, labels (N,) integers in [0, V) or ``ignore_index``.
    Returns (N,) float32 (float64 for float64 logits). A label outside [0, V) other than
    ``ignore_index`` is an error on the reference path (torch's) and a NaN loss on the Triton
    one (checking would stop the GPU to read the labels back).
    """
    op = "cross_entropy"
    require_ndim(op, "logits", logits, {2: "(N, V)"})
    require_shape(op, "labels", labels, (logits.shape[0],), "(N,)")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"{op}: logits must be floating point, got {logits.dtype}")
    require_integers_beside(op, "labels", labels, "logits", logits, "move them to that device")
    kernel = mambaverse.get_kernel(op, impl=impl, device=logits.device, dtype=logits.dtype)
    return kernel(logits, labels, whole_number(op, "ignore_index", ignore_index))
