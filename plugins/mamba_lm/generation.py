"""Autoregressive generation with a recurrent state: prefill in parallel, then one step per token.

    state  = model.allocate_state(B, L + max_new_tokens)
    logits = model(input_ids, state)           parallel scan over the prompt; leaves each layer's
                                               final state (SSM) or keys and values (attention)
    repeat: token = choose(logits[:, -1]);  logits = model.step(token, state)

For SSM layers ``state`` has a fixed size, so each new token costs the same time and memory
however long the sequence already is. Works with any model exposing ``allocate_state``,
``forward(input_ids, state, num_last_tokens)``, ``step(input_ids, state)`` and ``vocab_size``.

On a CUDA device ``model.step`` can be a captured CUDA graph replayed per token
(:mod:`.decode_graph`; ``cuda_graph`` below): the same kernels on the same state, without
launching each of them from Python. Choosing the token (argmax or sampling) stays outside it.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from .decode_graph import (
    DecodeGraph,
    GraphUnsupportedError,
    attends_with_sdpa,
    decode_graph,
    device_refusal,
)
from .sampling import check_sampling, next_token


def state_nbytes(state: list[Any]) -> int:
    """Bytes held by a model's decoding state (every layer's tensors)."""
    return sum(layer_state.nbytes() for layer_state in state)


def _normal_tensor_result(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` in inference mode, but return a normal tensor (as transformers' generate does):
    an inference tensor can be neither edited in place nor saved for a backward pass."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            out = fn(*args, **kwargs)
        return out.clone()

    return run


@_normal_tensor_result
def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    do_sample: bool | None = None,
    generator: torch.Generator | None = None,
    prefix_embeds: torch.Tensor | None = None,
    cuda_graph: bool | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` (B, L) by up to ``max_new_tokens``; returns (B, L + new) ids.

    prefix_embeds: (B, P, d_model) embeddings read before ``input_ids`` (a vision-language
    model's image tokens); the model's ``forward`` must take ``prefix_embeds``.

    do_sample: None = sample if temperature, top_k or top_p is set (temperature != 1), else
    greedy (argmax). eos_token_id: a sequence that emits one stops; it is padded with the
    id it emitted until every sequence has stopped (then generation ends early). None = the
    model's ``generation_defaults["eos_token_id"]`` (an imported checkpoint's end token), if
    any; ``[]`` = none.
    generator: random source for reproducible sampling.

    attention_mask: (B, L), 0 at the left padding of prompts of several lengths (transformers'
    convention, ``padding_side="left"``): each row continues its own prompt, as if alone. For
    models whose forward takes it (mamba_lm with Mamba or Mamba-2 mixers).

    cuda_graph: decode with one captured CUDA graph per step (:mod:`.decode_graph`): same
    tokens, fewer kernel launches. None = when it can (the model on CUDA, fixed-size states, a
    step that never waits for the GPU) and computes what eager steps compute: SSM states, and
    attention layers whose chosen attention kernel is torch SDPA (a static KV cache's step
    attends with SDPA under a mask); else eagerly. True = a graph (attention through SDPA
    whatever the choice) or :class:`GraphUnsupportedError` (a ConfigError) saying why not.
    False = eager.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(
            f"generate: expected input_ids (batch, length >= 1), got {tuple(input_ids.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample is None:
        do_sample = temperature != 1.0 or top_k is not None or top_p is not None
    if do_sample:
        check_sampling(temperature, top_k, top_p)
    if eos_token_id is None:
        eos_token_id = getattr(model, "generation_defaults", {}).get("eos_token_id")
    eos_ids = _as_ids(eos_token_id, input_ids.device)

    batch, length = input_ids.shape
    prefix = {} if prefix_embeds is None else {"prefix_embeds": prefix_embeds}
    if attention_mask is not None:
        if "attention_mask" not in inspect.signature(model.forward).parameters:
            raise ValueError(
                f"generate: {type(model).__name__} takes no attention_mask; batch prompts of "
                "equal length together"
            )
        prefix["attention_mask"] = attention_mask
    prefix_length = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    # The loop below calls the step max_new_tokens - 1 times (the last token needs none).
    max_seqlen = prefix_length + length + max_new_tokens
    graph = _decode_graph(
        model, batch, input_ids.device, cuda_graph, max_new_tokens > 1, max_seqlen
    )
    if graph is None:
        state = model.allocate_state(batch, max_seqlen, device=input_ids.device)
        step: Callable[[torch.Tensor], torch.Tensor] = partial(model.step, state=state)
    else:
        state, step = graph.reset(), graph.step  # prefill into the graph's own state
    logits = model(input_ids, state, num_last_tokens=1, **prefix)[:, -1]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    ended_with = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
    new_tokens = []
    for i in range(max_new_tokens):
        # Padded vocabulary rows are not tokens of the tokenizer: never choose them.
        token = next_token(
            logits[:, : model.vocab_size], do_sample, temperature, top_k, top_p, generator
        )
        if eos_ids is not None:
            # A finished sequence repeats the end token it emitted (one of its vocabulary).
            token = torch.where(finished, ended_with, token)
            ends = ~finished & torch.isin(token, eos_ids)
            ended_with = torch.where(ends, token, ended_with)
            finished |= ends
        new_tokens.append(token)
        if (eos_ids is not None and bool(finished.all())) or i == max_new_tokens - 1:
            break
        logits = step(token)
    return torch.cat([input_ids, *(t[:, None].to(input_ids.dtype) for t in new_tokens)], dim=1)


def _decode_graph(
    model: Any,
    batch: int,
    device: torch.device,
    cuda_graph: bool | None,
    needed: bool,
    max_seqlen: int,
) -> DecodeGraph | None:
    """The captured step to decode with, or None for eager steps (see ``generate``)."""
    if cuda_graph is False or (cuda_graph is None and not attends_with_sdpa(model, device)):
        return None
    refusal = device_refusal(device)
    if refusal is None and not needed:  # no step to take: nothing worth capturing
        return None
    if refusal is None:
        try:
            return decode_graph(model, batch, device, max_seqlen)
        except GraphUnsupportedError as err:
            refusal = str(err)
    if cuda_graph:
        raise GraphUnsupportedError(
            f"generate: cuda_graph=True, but {refusal}; use cuda_graph=None to decode with a "
            "graph where one can be captured and eagerly elsewhere"
        )
    return None


def token_ids(ids: int | Sequence[int] | torch.Tensor | None) -> list[int]:
    """Token ids as a list: from None, an int (numpy's too), a sequence or a tensor."""
    if ids is None:
        return []
    if isinstance(ids, torch.Tensor):
        return [int(i) for i in ids.flatten().tolist()]
    if isinstance(ids, numbers.Integral):
        return [int(ids)]
    return [int(i) for i in ids]


def _as_ids(
    ids: int | Sequence[int] | torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    listed = token_ids(ids)
    return torch.tensor(listed, dtype=torch.long, device=device) if listed else None
