"""Cross-entropy in plain PyTorch: the logits cast to float32 (float64 stays), torch's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inputs import compute_dtype


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Reference implementation of :func:`mambaverse.kernels.cross_entropy` (see there)."""
    return F.cross_entropy(
        logits.to(compute_dtype(logits)), labels.long(), ignore_index=ignore_index, reduction="none"
    )
