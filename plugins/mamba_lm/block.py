"""A pre-norm residual block, carrying the residual stream as mamba_ssm's ``Block`` does.

The stream after block i is h_i = h_{i-1} + mixer_i(norm_i(h_{i-1})). Each block is handed the
previous block's mixer output and the stream before it, (hidden, residual), and does the add
with its own norm, so "add -> norm" is one fused op (``add_rms_norm``: one kernel each way on
CUDA, the norm taken from the float32 sum):

    s      = hidden + residual                 (hidden alone for the first block)
    hidden = mixer(norm(s)),  residual = s     -> the next block; the model's final norm adds last
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mambaverse.plugins.mixers.norms import add_and_norm


class ResidualBlock(nn.Module):
    """(hidden, residual) -> (mixer(norm(s)), s) with s = hidden + residual, for the whole
    sequence (``forward``) or one token (``step``).

    residual_in_fp32: keep the residual stream s in float32 (or wider) when the model runs in
    half precision, as the Mamba models do; the sum of n_layer updates loses bits otherwise.
    """

    def __init__(self, mixer: nn.Module, norm: nn.Module, residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        state: Any = None,
        padding: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: (B, L, dim) -> the same; ``state`` is filled for decoding when given;
        ``padding`` (B, L), False at left padding, goes to the mixer (which must support it)."""
        normed, residual = add_and_norm(self.norm, hidden, residual, self.stream_dtype(hidden))
        mixed = self.mixer(normed, state) if padding is None else self.mixer(normed, state, padding)
        return mixed, residual

    def step(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, state: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: (B, dim) for one token -> the same; ``state`` is updated in place."""
        normed, residual = add_and_norm(self.norm, hidden, residual, self.stream_dtype(hidden))
        return self.mixer.step(normed, state), residual

    def stream_dtype(self, hidden: torch.Tensor) -> torch.dtype | None:
        """The dtype the residual stream is kept in: float32 (or wider) with residual_in_fp32,
        else None (the sum's own)."""
        return torch.promote_types(hidden.dtype, torch.float32) if self.residual_in_fp32 else None
