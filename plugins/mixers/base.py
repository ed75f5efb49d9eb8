"""The contract every token mixer here follows, for parallel forward and step-by-step decoding.

A token mixer maps ``(B, L, dim) -> (B, L, dim)``. For generation it also has a recurrent state:

- ``allocate_state(batch_size, max_seqlen)`` returns an empty state (zeros);
- ``forward(x, state)`` runs the whole sequence in parallel *and* leaves in ``state`` what
  decoding needs to continue after ``x`` (prefill);
- ``step(x_t, state)`` maps one token ``(B, dim) -> (B, dim)``, updating ``state`` in place.

A mixer with ``supports_padding = True`` also takes ``padding`` (B, L), True at the real tokens
of left-padded prompts, and leaves the pad positions out of its state: each row's outputs and
state are those of its prompt alone (what batched generation of prompts of several lengths
needs).

For SSM mixers the state has a fixed size, so decoding uses constant memory per new token.
Subclasses implement ``mix``, ``mix_step`` and ``allocate_state``; this class checks shapes and
applies the mixer's own ``kernels`` choice (op -> impl) around the computation.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from mambaverse.dispatch import kernel_choices


def kernel_scope(kernels: dict[str, str] | None) -> Any:
    """Context applying ``kernels`` (op -> impl); without a choice, keep the enclosing one."""
    return kernel_choices(kernels) if kernels else nullcontext()


class TokenMixer(nn.Module):
    """Base class: shape checks and kernel choice around ``mix`` / ``mix_step``."""

    mixer_name = "token mixer"
    supports_padding = False

    def __init__(self, dim: int, kernels: dict[str, str] | None = None) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"{self.mixer_name} mixer: dim must be positive, got {dim}")
        self.dim = dim
        self.kernels = dict(kernels) if kernels else None

    def forward(
        self, x: torch.Tensor, state: Any = None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, L, dim) -> (B, L, dim); with ``state``, also fill it for decoding; with
        ``padding`` (B, L) bool, True at real tokens, leave left padding out (see above)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.mixer_name} mixer: expected input (batch, length, {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        self._check_state(x, state)
        if padding is None:
            with kernel_scope(self.kernels):
                return self.mix(x, state)
        if not self.supports_padding:
            raise ValueError(
                f"{self.mixer_name} mixer: left-padded prompts (an attention_mask with padding) "
                "are not supported; batch prompts of equal length together"
            )
        if padding.shape != x.shape[:2]:
            raise ValueError(
                f"{self.mixer_name} mixer: padding must be (batch, length) = {tuple(x.shape[:2])}, "
                f"got {tuple(padding.shape)}"
            )
        with kernel_scope(self.kernels):
            return self.mix(x, state, padding)

    def step(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """One decoding step: x (B, dim) -> (B, dim); ``state`` is updated in place."""
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.mixer_name} mixer step: expected one token (batch, {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        self._check_state(x, state)
        with kernel_scope(self.kernels):
            return self.mix_step(x, state)

    def _check_state(self, x: torch.Tensor, state: Any) -> None:
        allocated = getattr(state, "batch_size", x.shape[0])
        if allocated != x.shape[0]:
            raise ValueError(
                f"{self.mixer_name} mixer: the decoding state was allocated for batch "
                f"{allocated}, got a batch of {x.shape[0]}; allocate it with "
                f"allocate_state(batch_size={x.shape[0]}, ...)"
            )

    def mix(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def mix_step(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Any:
        raise NotImplementedError
