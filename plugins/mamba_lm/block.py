"""A pre-norm residual block: h -> h + mixer(norm(h))."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """h -> h + mixer(norm(h)), for the whole sequence (``forward``) or one token (``step``).

    residual_in_fp32: keep the residual stream in float32 (or wider) when the model runs in
    half precision, as the Mamba models do; the sum of n_layer updates loses bits otherwise.
    """

    def __init__(self, mixer: nn.Module, norm: nn.Module, residual_in_fp32: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, h: torch.Tensor, state: Any = None) -> torch.Tensor:
        """h: (B, L, dim) -> (B, L, dim); ``state`` is filled for decoding when given."""
        return self._residual(h) + self.mixer(self._normed(h), state)

    def step(self, h: torch.Tensor, state: Any) -> torch.Tensor:
        """h: (B, dim) for one token -> (B, dim); ``state`` is updated in place."""
        return self._residual(h) + self.mixer.step(self._normed(h), state)

    def _normed(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h.to(self.norm.weight.dtype))

    def _residual(self, h: torch.Tensor) -> torch.Tensor:
        return h.to(torch.promote_types(h.dtype, torch.float32)) if self.residual_in_fp32 else h
