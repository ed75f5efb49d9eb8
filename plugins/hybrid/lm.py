"""What the hybrid language models share: token embedding, a stack of layers, final RMSNorm and
the LM head, and decoding with a per-layer state.

    h_0    = embedding(input_ids)                   (B, L, d_model)
    h      = stack(h_0, state)                      the subclass's layers
    logits = lm_head(norm_f(h))                     (B, L, padded vocab)

Subclasses implement ``stack`` (whole sequence), ``stack_step`` (one token) and
``allocate_state``; the stacks return the stream h as (hidden, residual), h = hidden + residual
(residual None: h = hidden), so that the last add runs fused with norm_f as mamba_lm's blocks do
theirs. Generation is mamba_lm's (prefill in parallel, then one step per token).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mambaverse.plugins.mamba_lm.generation import generate
from mambaverse.plugins.mamba_lm.model import (
    check_token_ids,
    embed_tokens,
    final_norm,
    padded_vocab_size,
)
from mambaverse.plugins.mixers.base import kernel_scope
from mambaverse.plugins.mixers.mamba import step_decay_rates
from mambaverse.plugins.mixers.norms import RMSNorm

Stream = tuple[torch.Tensor, torch.Tensor | None]  # (hidden, residual): the stream is their sum


class LanguageModel(nn.Module):
    """Embedding, final norm and LM head around a subclass's layers.

    vocab_size: tokens of the tokenizer (rows beyond it, from ``pad_vocab_size_multiple``, are
    never generated). tie_embeddings: the LM head shares the embedding matrix.
    initializer_range: std of the embedding (and untied head) init. kernels: op -> impl.
    """

    name = "language model"

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        norm_eps: float,
        tie_embeddings: bool,
        pad_vocab_size_multiple: int,
        initializer_range: float,
        kernels: dict[str, str] | None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, pad_vocab_size_multiple)
        self.d_model = d_model
        self.kernels = dict(kernels) if kernels else None
        self.embedding = nn.Embedding(self.padded_vocab_size, d_model)
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, self.padded_vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=initializer_range)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: list[Any] | None = None,
        num_last_tokens: int = 0,
        prefix_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, padded vocab) (B, P + L, ... with a prefix).

        state: from :meth:`allocate_state`, empty; filled with what decoding needs to continue.
        num_last_tokens: if > 0, only the logits of the last that many positions.
        prefix_embeds: (B, P, d_model) embeddings placed before the tokens (a VLM's image tokens).
        """
        self._check_ids(input_ids, 2, "(batch, length)")
        with kernel_scope(self.kernels):
            stream = self.stack(embed_tokens(self.embedding, input_ids, prefix_embeds), state)
            hidden, residual = self._checked(stream, "stack")
            return self.lm_head(final_norm(self.norm_f, hidden, residual, num_last_tokens))

    def step(self, input_ids: torch.Tensor, state: list[Any]) -> torch.Tensor:
        """One decoding step: input_ids (B,) -> logits (B, padded vocab); ``state`` updated in place."""
        self._check_ids(input_ids, 1, "(batch,)")
        with kernel_scope(self.kernels), step_decay_rates(self):
            stream = self.stack_step(self.embedding(input_ids), state)
            hidden, residual = self._checked(stream, "stack_step")
            return self.lm_head(final_norm(self.norm_f, hidden, residual))

    def stack(self, h: torch.Tensor, state: list[Any] | None) -> Stream:
        """The layers on a whole sequence: h (B, L, d_model) -> (hidden, residual), each
        (B, L, d_model) or residual None."""
        raise NotImplementedError

    def stack_step(self, h: torch.Tensor, state: list[Any]) -> Stream:
        """The layers on one token: h (B, d_model) -> (hidden, residual), each (B, d_model) or
        residual None."""
        raise NotImplementedError

    def _checked(self, stream: Any, method: str) -> Stream:
        """A stack's result, refused with a clear error unless it is (hidden, residual): a single
        tensor would unpack along the batch."""
        if isinstance(stream, tuple) and len(stream) == 2:
            return stream
        raise TypeError(
            f"{type(self).__name__}.{method} must return the stream as a tuple (hidden, residual) "
            f"(residual None when the stream is hidden alone), got {type(stream).__name__}"
        )

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[Any]:
        """Empty decoding state: SSM layers a fixed size, attention layers up to ``max_seqlen``."""
        raise NotImplementedError

    generate = generate

    def _check_ids(self, input_ids: torch.Tensor, ndim: int, layout: str) -> None:
        check_token_ids(self.name, input_ids, ndim, layout, self.embedding.num_embeddings)
