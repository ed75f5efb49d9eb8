"""Mamba language models: embedding, n_layer pre-norm residual blocks, final norm, LM head.

The same network as state-spaces/mamba's ``MambaLMHeadModel`` and transformers'
``MambaForCausalLM`` / ``Mamba2ForCausalLM``:

    h_0 = embedding(input_ids)                              (B, L, d_model)
    h_i = h_{i-1} + mixer_i(norm_i(h_{i-1}))                i = 1 .. n_layer
    logits = lm_head(norm_f(h_n))                           (B, L, padded vocab)

Each add runs fused with the norm after it (see :mod:`.block`), as mamba_ssm's fused_add_norm.

The token mixer is any registered token mixer with a decoding state (``mamba``, ``mamba2``,
``attention``, ...), built by name, so generation works for all of them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mambaverse.api import check_keys, create_mixer, get_mixer
from mambaverse.bounds import Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.plugins.mixers.base import kernel_scope
from mambaverse.plugins.mixers.mamba import step_decay_rates
from mambaverse.plugins.mixers.norms import add_and_norm, make_norm

from .block import ResidualBlock
from .generation import generate


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """vocab_size rounded up to a multiple of ``multiple`` (50277 -> 50280 for 8)."""
    return -(-vocab_size // multiple) * multiple


def check_token_ids(
    owner: str, input_ids: torch.Tensor, ndim: int, layout: str, vocab_rows: int
) -> None:
    """Refuse token ids that are not an integer tensor of ``ndim`` dims, or (on the CPU) that
    fall outside the embedding's ``vocab_rows`` rows. On an accelerator the range is not checked:
    reading the ids back would stop the device every step, and its embedding asserts anyway."""
    if input_ids.dim() != ndim or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"{owner}: expected integer token ids {layout}, got {input_ids.dtype} "
            f"of shape {tuple(input_ids.shape)}"
        )
    if input_ids.device.type != "cpu" or input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_rows:
        raise ValueError(
            f"{owner}: token ids must lie in [0, {vocab_rows}), got ids from {low} to {high}: "
            "was the text tokenised with another model's vocabulary?"
        )


def left_padding(
    attention_mask: torch.Tensor | None,
    input_ids: torch.Tensor,
    prefix_embeds: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``attention_mask`` (B, L) as the mixers' ``padding``: bool, True at tokens; None when it
    pads nothing. Only left padding is meaningful for a causal model read left to right."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    real = attention_mask.to(device=input_ids.device, dtype=torch.bool)
    if bool(real.all()):
        return None
    if prefix_embeds is not None:
        raise ValueError("attention_mask with prefix_embeds: pad nothing, or leave the prefix out")
    if bool((real[:, :-1] & ~real[:, 1:]).any()) or not bool(real[:, -1].all()):
        raise ValueError(
            "attention_mask: only left padding is supported (zeros, then ones, and every row "
            "ending with a token), as in tokenizer(..., padding_side='left')"
        )
    return real


def embed_tokens(
    embedding: nn.Embedding, input_ids: torch.Tensor, prefix_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """embedding(input_ids) (B, L, d), preceded by ``prefix_embeds`` (B, P, d) when given:
    embeddings made elsewhere (a vision-language model's image tokens) -> (B, P + L, d)."""
    h = embedding(input_ids)
    if prefix_embeds is None:
        return h
    if (
        prefix_embeds.dim() != 3
        or prefix_embeds.shape[0] != h.shape[0]
        or prefix_embeds.shape[2] != h.shape[2]
    ):
        raise ValueError(
            f"prefix_embeds: expected ({h.shape[0]}, length, {h.shape[2]}), "
            f"got {tuple(prefix_embeds.shape)}"
        )
    return torch.cat([prefix_embeds.to(h.dtype), h], dim=1)


def final_norm(
    norm: nn.Module,
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    num_last_tokens: int = 0,
) -> torch.Tensor:
    """norm(hidden + residual) in the norm's dtype, the stream's last step: (..., d) -> (..., d);
    with ``num_last_tokens`` > 0 only those last positions of (B, L, d)."""
    if num_last_tokens > 0:
        hidden = hidden[:, -num_last_tokens:]
        residual = residual[:, -num_last_tokens:] if residual is not None else None
    if residual is None:  # nothing to add: the norm alone, no copy of the stream
        return norm(hidden.to(norm.weight.dtype))
    return add_and_norm(norm, hidden, residual)[0]


class MambaLM(nn.Module):
    """A causal language model of ``n_layer`` blocks of one token mixer.

    vocab_size: tokens of the tokenizer; the embedding has ``vocab_size`` rounded up to a multiple
    of ``pad_vocab_size_multiple`` rows (faster matmuls; the extra ids are never generated).
    d_model: width. n_layer: blocks. mixer: token mixer name ("mamba", "mamba2", ...).
    mixer_config: that mixer's config keys. norm: "rmsnorm" or "layernorm", norm_eps its epsilon.
    residual_in_fp32: float32 residual stream. tie_embeddings: lm_head shares the embedding.
    initializer_range: std of the embedding init. rescale_prenorm_residual: divide each mixer's
    out_proj init by sqrt(n_layer) (GPT-2's scheme, as mamba_ssm). kernels: op -> impl.
    """

    def __init__(
        self,
        vocab_size: Positive = 50277,
        d_model: Positive = 768,
        n_layer: Positive = 24,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        norm: str = "rmsnorm",
        norm_eps: PositiveFloat = 1e-5,
        residual_in_fp32: bool = True,
        tie_embeddings: bool = True,
        pad_vocab_size_multiple: Positive = 8,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if get_mixer(mixer).kind != "token":
            raise ConfigError(
                f"mamba_lm: mixer {mixer!r} is a channel mixer; choose a token mixer "
                "such as 'mamba' or 'mamba2'"
            )
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, pad_vocab_size_multiple)
        self.d_model, self.n_layer = d_model, n_layer
        self.kernels = dict(kernels) if kernels else None

        self.embedding = nn.Embedding(self.padded_vocab_size, d_model)
        try:
            check_keys(
                f"mixer {mixer!r} config",
                get_mixer(mixer).load(),
                mixer_config or {},
                skip=("dim",),
            )
        except ConfigError as err:
            raise ConfigError(
                f"mamba_lm: {err} (from mixer_config {mixer_config}: a preset sets it for its "
                f"own mixer; with mixer={mixer!r} give mixer_config that mixer's keys, or {{}})"
            ) from None
        self.layers = nn.ModuleList(
            ResidualBlock(
                create_mixer(mixer, d_model, **(mixer_config or {})),
                make_norm(norm, d_model, norm_eps),
                residual_in_fp32,
            )
            for _ in range(n_layer)
        )
        self.norm_f = make_norm(norm, d_model, norm_eps)
        self.lm_head = nn.Linear(d_model, self.padded_vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight

        nn.init.normal_(self.embedding.weight, std=initializer_range)
        if rescale_prenorm_residual:
            with torch.no_grad():
                for name, p in self.layers.named_parameters():
                    if name.endswith("mixer.out_proj.weight"):
                        p /= math.sqrt(n_layer)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: list[Any] | None = None,
        num_last_tokens: int = 0,
        prefix_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) -> logits (B, L, padded vocab) (B, P + L, ... with a prefix).

        state: from :meth:`allocate_state`; filled with each layer's state after the last token.
        num_last_tokens: if > 0, only the logits of the last that many positions.
        prefix_embeds: (B, P, d_model) embeddings placed before the tokens (a VLM's image tokens).
        attention_mask: (B, L), 1 at tokens and 0 at the left padding of prompts of several
        lengths (transformers' convention): each row computes as its prompt alone, for SSM
        mixers (Mamba, Mamba-2); the logits at pad positions mean nothing.
        """
        self._check_ids(input_ids, 2, "(batch, length)")
        padding = left_padding(attention_mask, input_ids, prefix_embeds)
        with kernel_scope(self.kernels):
            hidden, residual = embed_tokens(self.embedding, input_ids, prefix_embeds), None
            for i, block in enumerate(self.layers):
                layer_state = None if state is None else state[i]
                hidden, residual = block(hidden, residual, layer_state, padding)
            return self.lm_head(final_norm(self.norm_f, hidden, residual, num_last_tokens))

    def step(self, input_ids: torch.Tensor, state: list[Any]) -> torch.Tensor:
        """One decoding step: input_ids (B,) -> logits (B, padded vocab); ``state`` updated in place."""
        self._check_ids(input_ids, 1, "(batch,)")
        with kernel_scope(self.kernels), step_decay_rates(self):
            hidden, residual = self.embedding(input_ids), None
            for block, layer_state in zip(self.layers, state, strict=True):
                hidden, residual = block.step(hidden, residual, layer_state)
            return self.lm_head(final_norm(self.norm_f, hidden, residual))

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[Any]:
        """One empty decoding state per layer (SSM layers: fixed size whatever ``max_seqlen``)."""
        return [
            block.mixer.allocate_state(batch_size, max_seqlen, dtype=dtype, device=device)
            for block in self.layers
        ]

    generate = generate

    def _check_ids(self, input_ids: torch.Tensor, ndim: int, layout: str) -> None:
        check_token_ids("mamba_lm", input_ids, ndim, layout, self.embedding.num_embeddings)
