"""Generation cost of a language model, split the way it is paid: a parallel prefill of the
context, then one ``step`` per new token with the recurrent state (what ``model.generate`` does).

    state  = model.allocate_state(B, context + new tokens)    SSM layers: fixed size;
                                                              attention layers: the KV cache
    logits = model(context, state)                            prefill (timed once)
    token  = argmax(logits);  logits = model.step(token, state)   decode (each step timed)

Reported: prefill time, the median decode step (tokens/s = B / step), the state's bytes, and
the peak memory while decoding (weights + state + one step's temporaries).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from mambaverse.plugins.mamba_lm.decode_graph import (
    DecodeGraph,
    clear_decode_graphs,
    decode_graph,
    reset_state,
)
from mambaverse.plugins.mamba_lm.generation import state_nbytes

from .measure import OK, failure, free_memory, peak_bytes, reset_peak, time_calls


@torch.inference_mode()
def measure_decoding(
    model: nn.Module,
    input_ids: torch.Tensor,
    new_tokens: int,
    device: torch.device,
    prefix_embeds: torch.Tensor | None = None,
    warmup_steps: int = 2,
) -> dict[str, Any]:
    """Prefill ``input_ids`` (B, L) (after ``prefix_embeds`` (B, P, d) when given), then decode
    ``new_tokens`` greedily; see the module docstring for what is returned."""
    batch, length = input_ids.shape
    prefix = {} if prefix_embeds is None else {"prefix_embeds": prefix_embeds}
    context = length + (0 if prefix_embeds is None else prefix_embeds.shape[1])
    phase = "state"
    try:
        state = model.allocate_state(batch, context + warmup_steps + new_tokens, device=device)
        # An untimed prefill into the state first (kernel compilation and autotuning: filling a
        # state takes kernels of its own), then the state emptied again.
        phase = "prefill"
        model(input_ids, state, num_last_tokens=1, **prefix)
        reset_state(state)
        reset_peak(device)
        (prefill_ms,) = time_calls(
            lambda: model(input_ids, state, num_last_tokens=1, **prefix), device, 1
        )
        token = torch.zeros(batch, dtype=torch.long, device=device)

        def step() -> None:
            token.copy_(model.step(token, state)[:, : model.vocab_size].argmax(-1))

        phase = "decode"
        for _ in range(warmup_steps):
            step()
        prefill_peak = peak_bytes(device)
        reset_peak(device)
        step_ms = statistics.median(time_calls(step, device, new_tokens))
        return {
            "prefill_ms": prefill_ms,
            "decode_ms_per_step": step_ms,
            "decode_tokens_per_s": batch * 1e3 / step_ms,
            "state_bytes": state_nbytes(state),
            "prefill_peak_bytes": prefill_peak,
            "decode_peak_bytes": peak_bytes(device),
            "status": OK,
        }
    except Exception as err:  # one failing point must not end the suite
        status = f"{failure(err)} ({phase})"
    free_memory(device)  # outside the except block: the traceback no longer holds the tensors
    return {"status": status}


class GraphDecoding(nn.Module):
    """A language model whose ``step`` replays its captured CUDA graph: ``allocate_state``
    captures the graph for the batch and returns the graph's own state, which the prefill fills
    and every replay updates in place. Forward (the prefill) is the model's. One graph at a time:
    the graphs of earlier points are freed first, since their KV caches would otherwise hold
    memory the next point needs (at 16k tokens, batch 8, a Transformer's is 19 GiB)."""

    def __init__(self, language_model: nn.Module) -> None:
        super().__init__()
        self.language_model = language_model
        self.vocab_size = language_model.vocab_size
        self.graph: DecodeGraph | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.language_model(*args, **kwargs)

    def allocate_state(self, batch_size: int, max_seqlen: int, device=None, dtype=None) -> list:
        self.graph = None
        clear_decode_graphs(self.language_model)
        free_memory(torch.device(device if device is not None else "cuda"))
        self.graph = decode_graph(self.language_model, batch_size, device, max_seqlen)
        return self.graph.reset()

    def step(self, input_ids: torch.Tensor, state: list) -> torch.Tensor:
        if self.graph is None or state is not self.graph.state:
            raise ValueError("GraphDecoding.step: decode the state its allocate_state returned")
        return self.graph.step(input_ids)
