"""``zamba``: a Mamba backbone with a shared attention + MLP block re-applied every few layers
(Zamba, Glorioso et al. 2024, arXiv:2405.16712; Zamba2, arXiv:2411.15242), as transformers'
ZambaForCausalLM and Zamba2ForCausalLM.

    h_0 = embedding(ids)
    layer i ("m"):  h = h + mamba_i(RMSNorm(h))
    layer i ("h"):  s = shared_b(h, h_0)                   the shared block, no residual of its own
                    h = h + mamba_i(RMSNorm(h + linear_i(s)))
    shared_b(h, h_0) = mlp(RMSNorm(attention(RMSNorm(concat[h, h_0]))))

The shared block reads 2·d_model channels (the current state and the original embeddings) and
writes d_model; its attention uses softmax scale (head_dim / 2)^-½. Every "h" layer has its own
``linear_i`` and its own KV cache, but the block's weights are shared. Zamba2 alternates
``num_shared_blocks`` = 2 blocks (ABAB...) over Mamba-2 layers and gives each application of a
block its own low-rank adapters on the MLP's gate and up projections (and optionally on the
attention's q, k, v): see :mod:`~mambaverse.plugins.hybrid.adapters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mambaverse.api import create_mixer
from mambaverse.bounds import Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.plugins.mixers.attention import KVCache
from mambaverse.plugins.mixers.norms import RMSNorm

from .adapters import active_adapter, adapt, low_rank
from .lm import LanguageModel, Stream
from .pattern import expand_codes

LAYER_CODES = {"m": "mamba", "h": "hybrid"}  # "h": the shared block, then the Mamba layer


@dataclass
class HybridLayerState:
    """Decoding state of a layer that applies the shared block: its KV cache and its SSM state."""

    attention: KVCache
    mixer: Any

    def nbytes(self) -> int:
        return self.attention.nbytes() + self.mixer.nbytes()


class SharedBlock(nn.Module):
    """Zamba's shared transformer block: (h, h_0) (B, L, d_model) × 2 -> (B, L, d_model).

    uses: how many layers apply this block (one adapter set per use when adapter_rank is set).
    """

    def __init__(
        self,
        d_model: int,
        attention_config: dict[str, Any],
        mlp_config: dict[str, Any],
        norm_eps: float,
        uses: int,
        adapter_rank: int | None,
        attention_adapters: bool,
    ) -> None:
        super().__init__()
        self.input_norm = RMSNorm(2 * d_model, eps=norm_eps)
        self.attention = create_mixer("attention", 2 * d_model, out_dim=d_model, **attention_config)
        self.ffn_norm = RMSNorm(d_model, eps=norm_eps)
        self.ffn = create_mixer("mlp", d_model, **mlp_config)
        if adapter_rank is not None:
            self._add_adapters(d_model, adapter_rank, uses, attention_adapters)

    def _add_adapters(self, d_model: int, rank: int, uses: int, attention_adapters: bool) -> None:
        if not hasattr(self.ffn, "gate_proj"):
            raise ConfigError("zamba: adapters need a gated MLP (activation geglu or swiglu)")
        # Zamba2 adapts the fused gate-and-up projection: one D_i feeds both halves of U_i.
        downs = [nn.Linear(d_model, rank, bias=False) for _ in range(uses)]
        hidden = self.ffn.hidden_dim
        for name in ("gate_proj", "up_proj"):
            adapt(
                self.ffn,
                name,
                [nn.Sequential(down, nn.Linear(rank, hidden, bias=False)) for down in downs],
            )
        if attention_adapters:
            for name in ("q_proj", "k_proj", "v_proj"):
                linear = getattr(self.attention, name)
                adapt(
                    self.attention,
                    name,
                    [low_rank(linear.in_features, rank, linear.out_features) for _ in range(uses)],
                )

    def forward(
        self, h: torch.Tensor, h0: torch.Tensor, state: KVCache | None, use: int
    ) -> torch.Tensor:
        """h, h0: (B, L, d_model) -> (B, L, d_model); ``use``: which application this is."""
        return self._attend(self.attention, h, h0, state, use)

    def step(self, h: torch.Tensor, h0: torch.Tensor, state: KVCache, use: int) -> torch.Tensor:
        """One token: h, h0 (B, d_model) -> (B, d_model); the KV cache grows by one."""
        return self._attend(self.attention.step, h, h0, state, use)

    def _attend(
        self, attend: Any, h: torch.Tensor, h0: torch.Tensor, state: Any, use: int
    ) -> torch.Tensor:
        with active_adapter(self, use):
            y = attend(self.input_norm(torch.cat([h, h0], dim=-1)), state)
            return self.ffn(self.ffn_norm(y))


class ZambaLayer(nn.Module):
    """h -> h + mixer(RMSNorm(h + linear(s))): the shared block's output ``s`` (if this layer
    applies it) joins the Mamba layer's input but not its residual."""

    def __init__(self, mixer: nn.Module, d_model: int, norm_eps: float, hybrid: bool) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.linear = nn.Linear(d_model, d_model, bias=False) if hybrid else None

    def forward(
        self, h: torch.Tensor, shared: torch.Tensor | None, state: Any = None
    ) -> torch.Tensor:
        return h + self.mixer(self.norm(self._input(h, shared)), state)

    def step(self, h: torch.Tensor, shared: torch.Tensor | None, state: Any) -> torch.Tensor:
        return h + self.mixer.step(self.norm(self._input(h, shared)), state)

    def _input(self, h: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        return h if shared is None else h + self.linear(shared)


class ZambaLM(LanguageModel):
    """Zamba / Zamba2 causal LM.

    layers: one code per layer, "m" (Mamba layer) or "h" (shared block, then Mamba layer);
    spaces and "|" are ignored. mixer: the backbone's token mixer ("mamba" for Zamba, "mamba2"
    for Zamba2), mixer_config its keys. attention_config: the shared attention's keys; defaults
    num_heads 16, head_dim 2·d_model / num_heads, no rotary (rope_theta None), scale
    (head_dim / 2)^-½. mlp_config: the shared MLP's keys; default activation "geglu",
    hidden_dim 4·d_model. num_shared_blocks: blocks used in turn by the "h" layers (Zamba 1,
    Zamba2 2). adapter_rank: rank of Zamba2's per-use adapters on the MLP's gate and up
    projections (None = none); attention_adapters: also on q, k, v. norm_eps: every RMSNorm.
    Other keys as :class:`~mambaverse.plugins.hybrid.lm.LanguageModel`.
    """

    name = "zamba"

    def __init__(
        self,
        vocab_size: Positive = 32000,
        d_model: Positive = 1024,
        layers: str = "mmmmmh" * 4,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        attention_config: dict[str, Any] | None = None,
        mlp_config: dict[str, Any] | None = None,
        num_shared_blocks: Positive = 1,
        adapter_rank: Positive | None = None,
        attention_adapters: bool = False,
        norm_eps: PositiveFloat = 1e-5,
        tie_embeddings: bool = True,
        pad_vocab_size_multiple: Positive = 1,
        initializer_range: float = 0.02,
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
        kinds = expand_codes(layers, LAYER_CODES, "zamba layers")
        hybrid = [i for i, kind in enumerate(kinds) if kind == "hybrid"]
        if num_shared_blocks < 1:
            raise ConfigError(f"zamba: num_shared_blocks must be >= 1, got {num_shared_blocks}")
        if len(hybrid) < num_shared_blocks:
            raise ConfigError(
                f"zamba: {num_shared_blocks} shared blocks but only {len(hybrid)} 'h' layers "
                f"apply one in {layers!r}; every block needs at least one"
            )
        if attention_adapters and adapter_rank is None:
            raise ConfigError("zamba: attention_adapters needs adapter_rank")
        # The k-th "h" layer applies block k mod num_shared_blocks, as that block's use k // n.
        self.shared_use = {
            layer: (k % num_shared_blocks, k // num_shared_blocks) for k, layer in enumerate(hybrid)
        }
        self.layers = nn.ModuleList(
            ZambaLayer(
                create_mixer(mixer, d_model, **(mixer_config or {})),
                d_model,
                norm_eps,
                hybrid=kind == "hybrid",
            )
            for kind in kinds
        )
        attention = self._attention_config(d_model, attention_config)
        mlp = {"activation": "geglu", "hidden_dim": 4 * d_model, **(mlp_config or {})}
        self.shared_blocks = nn.ModuleList(
            SharedBlock(
                d_model,
                attention,
                mlp,
                norm_eps,
                uses=len(hybrid[b::num_shared_blocks]),
                adapter_rank=adapter_rank,
                attention_adapters=attention_adapters,
            )
            for b in range(num_shared_blocks)
        )

    @staticmethod
    def _attention_config(d_model: int, config: dict[str, Any] | None) -> dict[str, Any]:
        config = {"num_heads": 16, "rope_theta": None, **(config or {})}
        if "out_dim" in config:
            raise ConfigError(
                "zamba: attention_config cannot set out_dim; the block writes d_model"
            )
        config.setdefault("head_dim", 2 * d_model // config["num_heads"])
        config.setdefault("scale", (config["head_dim"] / 2) ** -0.5)
        return config

    def stack(self, h: torch.Tensor, state: list[Any] | None) -> Stream:
        return self._run(h, state, one_token=False), None

    def stack_step(self, h: torch.Tensor, state: list[Any]) -> Stream:
        return self._run(h, state, one_token=True), None

    def _run(self, h: torch.Tensor, state: list[Any] | None, one_token: bool) -> torch.Tensor:
        h0 = h  # the embeddings, which every application of a shared block reads again
        for i, layer in enumerate(self.layers):
            attention_state, mixer_state = self._split_state(state, i)
            shared = None
            if i in self.shared_use:
                index, use = self.shared_use[i]
                block = self.shared_blocks[index]
                shared = (block.step if one_token else block)(h, h0, attention_state, use)
            h = (layer.step if one_token else layer)(h, shared, mixer_state)
        return h

    def _split_state(self, state: list[Any] | None, i: int) -> tuple[KVCache | None, Any]:
        if state is None:
            return None, None
        if i in self.shared_use:
            return state[i].attention, state[i].mixer
        return None, state[i]

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> list[Any]:
        """Per layer its SSM state; the layers applying the shared block also get a KV cache."""
        states: list[Any] = []
        for i, layer in enumerate(self.layers):
            mixer_state = layer.mixer.allocate_state(
                batch_size, max_seqlen, dtype=dtype, device=device
            )
            if i in self.shared_use:
                block = self.shared_blocks[self.shared_use[i][0]]
                kv = block.attention.allocate_state(
                    batch_size, max_seqlen, dtype=dtype, device=device
                )
                mixer_state = HybridLayerState(attention=kv, mixer=mixer_state)
            states.append(mixer_state)
        return states
