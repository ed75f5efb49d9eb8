"""``hybrid_lm``: a language model whose layers mix Mamba, Mamba-2 and attention by a pattern,
each followed by an MLP or a mixture of experts (Jamba, Lieber et al. 2024; Bamba, IBM 2024).

Every layer is two pre-norm residual blocks, as transformers' JambaAttentionDecoderLayer /
JambaMambaDecoderLayer / BambaDecoderLayer:

    h = h + mixer_i(RMSNorm(h))           mixer_i = mamba | mamba2 | attention | ... (the pattern)
    h = h + ffn_i(RMSNorm(h))             ffn_i = SwiGLU MLP, or MoE on the layers chosen by
                                          moe_every / moe_offset or moe_layers

Jamba-v0.1 is ``layers="mmmmammm" × 4`` (Mamba with RMSNorms on Δ, B, C; attention without
positional encoding) with MoE on every other layer; Bamba-9B is Mamba-2 everywhere but layers
9, 18 and 27 (attention with rotary embeddings on half of each head), no MoE.

MoE layers add a router load-balancing loss: after a forward call, ``model.aux_loss`` holds it
for the call's tokens (all MoE layers together, as transformers' Jamba computes it); a training
loop adds ``model.aux_loss_coef * model.aux_loss`` to the language-model loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mambaverse.api import create_mixer
from mambaverse.bounds import NonNegative, NonNegativeFloat, Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.plugins.mamba_lm.block import ResidualBlock
from mambaverse.plugins.mixers.norms import RMSNorm, add_and_norm

from .lm import LanguageModel, Stream
from .moe import load_balancing_loss
from .pattern import moe_flags, token_mixers


class HybridLayer(nn.Module):
    """A token-mixer residual block, then a channel-mixer (MLP or MoE) residual block."""

    def __init__(
        self,
        mixer: nn.Module,
        ffn: nn.Module,
        d_model: int,
        norm_eps: float,
        residual_in_fp32: bool,
    ) -> None:
        super().__init__()
        self.mixer_block = ResidualBlock(mixer, RMSNorm(d_model, eps=norm_eps), residual_in_fp32)
        self.ffn_norm = RMSNorm(d_model, eps=norm_eps)
        self.ffn = ffn

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, state: Any = None
    ) -> Stream:
        """(hidden, residual) (B, L, d_model) each -> the same, as
        :class:`~mambaverse.plugins.mamba_lm.block.ResidualBlock`; ``state`` is filled for
        decoding when given."""
        return self._ffn_block(*self.mixer_block(hidden, residual, state))

    def step(self, hidden: torch.Tensor, residual: torch.Tensor | None, state: Any) -> Stream:
        """(hidden, residual) (B, d_model) each, for one token -> the same; ``state`` is updated
        in place."""
        return self._ffn_block(*self.mixer_block.step(hidden, residual, state))

    def _ffn_block(self, hidden: torch.Tensor, residual: torch.Tensor) -> Stream:
        stream_dtype = self.mixer_block.stream_dtype(hidden)
        normed, residual = add_and_norm(self.ffn_norm, hidden, residual, stream_dtype)
        return self.ffn(normed), residual


class HybridLM(LanguageModel):
    """A causal LM of token mixers chosen per layer, each followed by an MLP or MoE.

    layers: the pattern, one code per layer ("m" mamba, "2" mamba2, "a" attention; spaces and
    "|" ignored) or a list of registered token-mixer names. mixer_config: token mixer name ->
    its config keys (e.g. {"attention": {"num_heads": 32, "num_kv_heads": 8}}).
    mlp_config: the ``mlp`` mixer's keys (default SwiGLU). moe_every, moe_offset: MoE on the
    layers i with i % moe_every == moe_offset (moe_every 0 = none), or moe_layers: their
    indices. moe_config: the ``moe`` mixer's keys (num_experts, top_k, hidden_dim).
    norm_eps: every RMSNorm's epsilon. residual_in_fp32: float32 residual stream.
    aux_loss_coef: weight of ``aux_loss`` in the training loss (Jamba: 0.001).
    Other keys as :class:`~mambaverse.plugins.hybrid.lm.LanguageModel`.
    """

    name = "hybrid_lm"

    def __init__(
        self,
        vocab_size: Positive = 65536,
        d_model: Positive = 1024,
        layers: str | Sequence[str] = "mmmmammm",
        mixer_config: dict[str, dict[str, Any]] | None = None,
        mlp_config: dict[str, Any] | None = None,
        moe_every: NonNegative = 0,
        moe_offset: NonNegative = 0,
        moe_layers: Sequence[int] | None = None,
        moe_config: dict[str, Any] | None = None,
        norm_eps: PositiveFloat = 1e-6,
        residual_in_fp32: bool = False,
        tie_embeddings: bool = False,
        pad_vocab_size_multiple: Positive = 1,
        initializer_range: float = 0.02,
        aux_loss_coef: NonNegativeFloat = 0.001,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            vocab_size,
            d_model,
            norm_eps,
            tie_embeddings,
            pad_vocab_size_multiple,
            initializer_range,
            kernels,
        )
        mixers = token_mixers(layers)
        mixer_config = dict(mixer_config or {})
        unused = sorted(set(mixer_config) - set(mixers))
        if unused:
            raise ConfigError(
                f"hybrid_lm: mixer_config has settings for {', '.join(unused)}, which no layer "
                f"uses (the layers use {', '.join(sorted(set(mixers)))})"
            )
        is_moe = moe_flags(len(mixers), moe_every, moe_offset, moe_layers)
        if moe_config and not any(is_moe):
            raise ConfigError(
                "hybrid_lm: moe_config is set but no layer is MoE; set moe_every (and moe_offset) "
                "or moe_layers"
            )
        mlp_config = {"activation": "swiglu", **(mlp_config or {})}
        self.layer_types = mixers
        self.moe_layers = [i for i, moe in enumerate(is_moe) if moe]
        self.aux_loss_coef = aux_loss_coef
        self.layers = nn.ModuleList(
            HybridLayer(
                create_mixer(name, d_model, **mixer_config.get(name, {})),
                create_mixer("moe", d_model, **(moe_config or {}))
                if moe
                else create_mixer("mlp", d_model, **mlp_config),
                d_model,
                norm_eps,
                residual_in_fp32,
            )
            for name, moe in zip(mixers, is_moe, strict=True)
        )

    def stack(self, h: torch.Tensor, state: list[Any] | None) -> Stream:
        hidden, residual = h, None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, None if state is None else state[i])
        return hidden, residual

    def stack_step(self, h: torch.Tensor, state: list[Any]) -> Stream:
        hidden, residual = h, None
        for layer, layer_state in zip(self.layers, state, strict=True):
            hidden, residual = layer.step(hidden, residual, layer_state)
        return hidden, residual

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[Any]:
        return [
            layer.mixer_block.mixer.allocate_state(
                batch_size, max_seqlen, dtype=dtype, device=device
            )
            for layer in self.layers
        ]

    @property
    def aux_loss(self) -> torch.Tensor:
        """Router load-balancing loss of the last call's tokens over all MoE layers (0 without)."""
        experts = [self.layers[i].ffn for i in self.moe_layers]
        if not experts:
            return torch.zeros((), device=self.embedding.weight.device)
        if experts[0].router_logits is None:
            raise RuntimeError("hybrid_lm: aux_loss is defined after a forward call")
        return load_balancing_loss([moe.router_logits for moe in experts], experts[0].top_k)
