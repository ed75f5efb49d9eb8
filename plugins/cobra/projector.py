"""Projectors: patch features (B, N, vision_dim) -> token embeddings (B, N, lm_dim).

The three variants of Cobra and LLaVA (h-zhao1997/cobra, cobra/util/nn_utils.py):

    linear          W x + b                                               (LLaVA-1)
    gelu-mlp        W2 gelu(W1 x)              W1: vision->lm, W2: lm->lm  (LLaVA-1.5)
    fused-gelu-mlp  W3 gelu(W2 gelu(W1 x))     W1: vision->4·vision, W2: 4·vision->lm, W3: lm->lm
                    (Cobra's, for the channel-wise concatenation of several towers' features)
"""

from __future__ import annotations

from torch import nn

from mambaverse.errors import unknown_name

PROJECTORS = ("linear", "gelu-mlp", "fused-gelu-mlp")


def build_projector(kind: str, vision_dim: int, lm_dim: int) -> nn.Module:
    """A projector of kind ``kind`` (one of :data:`PROJECTORS`), every layer with a bias."""
    if kind == "linear":
        return nn.Linear(vision_dim, lm_dim)
    if kind == "gelu-mlp":
        return nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))
    if kind == "fused-gelu-mlp":
        hidden = 4 * vision_dim
        return nn.Sequential(
            nn.Linear(vision_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, lm_dim),
            nn.GELU(),
            nn.Linear(lm_dim, lm_dim),
        )
    raise unknown_name("projector", kind, PROJECTORS)
