"""Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p.

greedy:      argmax_v logits_v
sampling:    v ~ softmax(logits / temperature) restricted to
             top-k: the k most likely tokens, and
             top-p: the smallest set of most likely tokens whose probability is >= p
             (Holtzman et al. 2019, "nucleus sampling"), renormalised.
"""

from __future__ import annotations

import torch

from mambaverse.errors import ConfigError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise :class:`ConfigError` for values outside temperature > 0, top_k >= 1, 0 < top_p <= 1."""
    if not temperature > 0:
        raise ConfigError(
            f"temperature must be > 0, got {temperature} (use do_sample=False for greedy)"
        )
    if top_k is not None and top_k < 1:
        raise ConfigError(
            f"top_k must be >= 1 or None, got {top_k} (None turns top-k off, as transformers' "
            "top_k=0 does)"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """logits (B, V) with every token outside the top-k and the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, -torch.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # A token is outside the nucleus when the tokens before it already reach top_p; the most
        # likely token is always kept.
        outside = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), -torch.inf)
    return logits


def next_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
