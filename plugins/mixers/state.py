"""The recurrent state of an SSM mixer: a fixed-size window of conv inputs and the SSM state."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SSMState:
    """Decoding state of one Mamba / Mamba-2 layer; its size does not depend on the length.

    conv: (B, channels, d_conv) the last d_conv inputs of the causal depthwise conv (oldest
          first, zeros before the sequence start); ``causal_conv1d_update`` shifts it by one.
    ssm:  (B, d_inner, d_state) for Mamba, (B, nheads, headdim, d_state) for Mamba-2; kept in
          float32 (or float64) whatever the activations' dtype, as the recurrence accumulates.
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    holds_tokens: bool = False  # a prefill or a step has stored tokens here

    def require_empty(self) -> None:
        """Called by a layer's prefill, which overwrites the state from an empty one: refuse a
        state that already holds tokens, rather than silently dropping them."""
        if self.holds_tokens:
            raise ValueError(
                "this decoding state already holds a sequence, and an SSM layer's prefill starts "
                "from an empty state: pass the whole prompt in one call and continue with "
                "step(), or allocate a new state (model.allocate_state)"
            )

    @property
    def batch_size(self) -> int:
        return self.conv.shape[0]

    @classmethod
    def zeros(
        cls,
        conv_shape: tuple[int, ...],
        ssm_shape: tuple[int, ...],
        like: torch.Tensor,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SSMState:
        """Empty state: conv in ``dtype`` (default ``like``'s), ssm in at least float32."""
        conv_dtype = dtype or like.dtype
        device = device or like.device
        return cls(
            conv=torch.zeros(conv_shape, dtype=conv_dtype, device=device),
            ssm=torch.zeros(
                ssm_shape, dtype=torch.promote_types(conv_dtype, torch.float32), device=device
            ),
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.ssm))
