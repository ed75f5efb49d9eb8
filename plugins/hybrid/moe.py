"""Mixture of experts: a router sends each token to its top-k SwiGLU experts (Jamba, Mixtral).

    p      = softmax(router(x))                      x: (T, dim) tokens, p: (T, num_experts)
    w, e   = top_k(p)                                the k largest probabilities and their experts
    y      = Σ_j w_j · expert_{e_j}(x)               experts: SwiGLU MLPs (dim -> hidden_dim -> dim)

As in Jamba the chosen weights are not renormalised to sum to one. Every token is processed by
exactly k experts (no capacity limit, no dropped tokens).

The router is kept balanced by the auxiliary loss of Switch Transformer (Fedus et al. 2021,
eqs. 4-6), the one transformers' Jamba adds to its language-model loss:

    aux = num_experts · Σ_e f_e · P_e
    f_e = (top-k assignments to expert e) / T        fraction of tokens routed to e (Σ_e f_e = k)
    P_e = mean_t p_{t,e}                             mean router probability of e

It is minimal (= k) when tokens and probability mass are spread evenly. Only P carries a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import Positive
from mambaverse.errors import ConfigError
from mambaverse.plugins.mixers.mlp import MLP


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it is (the router's softmax is never taken in half precision)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def load_balancing_loss(router_logits: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """The auxiliary loss above over the tokens of one or more MoE layers (taken together).

    router_logits: one (tokens, num_experts) tensor per layer, all with the same num_experts.
    Several layers count as one batch of layers·tokens rows, as in transformers' Jamba.
    """
    widths = {logits.shape[-1] for logits in router_logits}
    if len(widths) != 1:
        raise ValueError(
            f"load_balancing_loss: every layer needs the same number of experts, got {sorted(widths)}"
        )
    logits = torch.cat([logits.reshape(-1, logits.shape[-1]) for logits in router_logits])
    probs = at_least_float32(logits).softmax(dim=-1)  # (rows, num_experts)
    num_experts = probs.shape[-1]
    chosen = probs.topk(top_k, dim=-1).indices  # (rows, k)
    tokens_per_expert = F.one_hot(chosen, num_experts).sum(dim=(0, 1)) / probs.shape[0]
    return num_experts * (tokens_per_expert * probs.mean(dim=0)).sum()


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, a channel mixer ``(..., dim) -> (..., dim)``.

    num_experts: experts per layer. top_k: experts per token. hidden_dim: each expert's hidden
    width (None = the SwiGLU default of the ``mlp`` mixer). bias: biases in the experts.

    After each call ``router_logits`` holds the (tokens, num_experts) router logits of that call
    and ``aux_loss`` the load-balancing loss computed from them (add
    ``coefficient · aux_loss`` to the training loss; Jamba uses 0.001).
    """

    def __init__(
        self,
        dim: Positive,
        num_experts: Positive = 16,
        top_k: Positive = 2,
        hidden_dim: Positive | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ConfigError(
                f"moe mixer: need 1 <= top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}"
            )
        self.dim, self.num_experts, self.top_k = dim, num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(
            MLP(dim, hidden_dim, activation="swiglu", bias=bias) for _ in range(num_experts)
        )
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"moe mixer: expected input (..., {self.dim}), got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.dim)  # (T, dim)
        self.router_logits = self.router(tokens)  # (T, num_experts)
        probs = at_least_float32(self.router_logits).softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (T, k) each
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)  # tokens routed to e, and at which of their k
            # Called with no rows too while training: every expert then takes part in the
            # backward (zero gradients), which DistributedDataParallel requires of every parameter.
            if rows.numel() or torch.is_grad_enabled():
                out.index_add_(0, rows, expert(tokens[rows]) * weights[rows, slot, None])
        return out.reshape(x.shape)

    @property
    def aux_loss(self) -> torch.Tensor:
        """Load-balancing loss of the last call's tokens (see the module docstring)."""
        if self.router_logits is None:
            raise RuntimeError("moe mixer: aux_loss is defined after a forward call")
        return load_balancing_loss([self.router_logits], self.top_k)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_experts={self.num_experts}, top_k={self.top_k}"
