"""One decoding step captured as a CUDA graph, replayed for every new token.

At batch 1 a decoding step of a Mamba language model is a few small kernels per layer (in_proj,
conv update, x_proj, dt_proj, state update, out_proj, norms): the GPU finishes each faster than
Python launches the next, so eager decoding is bound by kernel launches. As state-spaces/mamba's
``generate(cg=True)``, the step is recorded once and replayed as a single graph launch:

    input_ids (B,)  ──►  model.step(input_ids, state)  ──►  logits (B, padded vocab)
    fixed buffers        every kernel of every layer        a fixed buffer
                         state: each layer's conv window and SSM state, updated in place

A graph replays fixed kernels on fixed addresses, so a step can be captured only when

- the model is on a CUDA device;
- every layer's state has a fixed size: :class:`SSMState` (conv window + SSM state), or an
  attention layer's :class:`KVCache` made *static*: allocated for a capacity (``max_seqlen``
  rounded up to a multiple of :data:`KV_CAPACITY_STEP`, one graph per capacity), the position
  kept on the device, each step attending over the whole buffer with a mask (the attention
  mixer's module docstring). A graph with KV caches costs O(capacity) per step, not O(length);
- a step never waits for the GPU (``.item()``, ``nonzero``, a host-to-device copy, a shape read
  from a tensor). The warm-up steps run with ``torch.cuda.set_sync_debug_mode("error")``, so any
  such operation refuses the capture (a mixture of experts' routing does, for instance).

Graphs are cached per model (weakly: they go with the model) and per batch size, device, KV
capacity and kernel choice, at most :data:`MAX_GRAPHS_PER_MODEL` per model (the least recently
used is dropped); a model whose weights moved (``.to(dtype)``, a reload) is captured anew.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mambaverse.dispatch import choose_kernel
from mambaverse.errors import ConfigError, MambaverseError
from mambaverse.plugins.mixers.attention import Attention, KVCache
from mambaverse.plugins.mixers.base import TokenMixer, kernel_scope
from mambaverse.plugins.mixers.state import SSMState

# Steps run before the capture: Triton compiles its kernels and cuBLAS picks its algorithms on
# the first calls, which must not happen inside the graph (state-spaces/mamba warms up twice too).
WARMUP_STEPS = 2
# What torch raises in sync debug mode "error" (c10/cuda/CUDAFunctions.cpp).
SYNC_ERROR = "called a synchronizing CUDA operation"
# KV caches of a graph hold a multiple of this many tokens: generations of similar lengths share one.
KV_CAPACITY_STEP = 256
# Graphs kept per model, least recently used dropped first: each holds its own state (for
# attention, KV caches of its capacity) and memory pool, so varied batch sizes and lengths must
# not pile them up.
MAX_GRAPHS_PER_MODEL = 4
# The ops of a decoding step whose implementation a kernel choice can change.
DECODE_OPS = (
    "selective_state_update",
    "ssd_state_update",
    "causal_conv1d_update",
    "attention",
    "add_rms_norm",
    "gated_rms_norm",
)


class GraphUnsupportedError(ConfigError):
    """This model's decoding step cannot be captured as a CUDA graph (the message says why)."""


@dataclass
class DecodeGraph:
    """A captured decoding step of one model for one batch size on one device.

    input_ids: (B,) the graph's input buffer. state: the model's decoding state (per layer an
    :class:`SSMState` or a static :class:`KVCache`, or a structure of them), allocated once:
    prefill into it, then call :meth:`step`. logits: (B, padded vocab) the graph's output
    buffer, overwritten by every step.
    """

    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    state: list[Any]
    logits: torch.Tensor
    kv_caches: list[KVCache] = dataclasses.field(init=False)  # the state's, found once

    def __post_init__(self) -> None:
        self.kv_caches = [part for part in state_parts(self.state) if isinstance(part, KVCache)]

    @torch.inference_mode()
    def step(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B,) -> logits (B, padded vocab), as ``model.step(input_ids, state)``; the
        returned tensor is the output buffer: read it before the next step."""
        caches = self.kv_caches
        for cache in caches:  # the replay cannot check; a write past the buffer would be fatal
            cache.require_room(1)
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        for cache in caches:  # the replay advanced the device position, not the host's
            cache.length += 1
        return self.logits

    def reset(self) -> list[Any]:
        """Empty the state (an empty sequence, as ``allocate_state``) and return it."""
        return reset_state(self.state)


@torch.inference_mode()
def reset_state(state: Any) -> Any:
    """Empty a decoding state in place (an empty sequence, as ``allocate_state`` returns it): KV
    caches cleared, conv windows and SSM states zeroed; returns it."""
    for part in state_parts(state):
        if isinstance(part, KVCache):
            part.clear()
        else:
            part.conv.zero_()
            part.ssm.zero_()
            part.holds_tokens = False
    return state


def state_parts(state: Any) -> list[Any]:
    """The :class:`SSMState` and :class:`KVCache` objects of a decoding state (a list per
    layer, possibly of dataclasses holding several, as Zamba's); anything else is returned too,
    for the caller to refuse."""
    if isinstance(state, (SSMState, KVCache)):
        return [state]
    if isinstance(state, (list, tuple)):
        return [part for item in state for part in state_parts(item)]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [
            part for f in dataclasses.fields(state) for part in state_parts(getattr(state, f.name))
        ]
    return [state]


def uses_kv_cache(model: nn.Module) -> bool:
    """Whether the model has attention mixers, whose decoding state is a KV cache."""
    return any(isinstance(module, Attention) for module in model.modules())


def attends_with_sdpa(model: nn.Module, device: torch.device | str) -> bool:
    """Whether every attention mixer of ``model`` decodes on ``device`` with torch SDPA (the
    model's and the mixer's ``kernels``, the environment and the registry deciding, as in a step):
    the kernel a static KV cache's step attends with, so that a graph computes what eager steps
    compute. True for a model without attention."""
    dtype = next(model.parameters()).dtype
    with kernel_scope(getattr(model, "kernels", None)):
        for module in model.modules():
            if isinstance(module, Attention):
                with kernel_scope(module.kernels):
                    if choose_kernel("attention", device=device, dtype=dtype).impl != "sdpa":
                        return False
    return True


def kv_capacity(model: nn.Module, max_seqlen: int) -> int:
    """The tokens a graph's KV caches hold for sequences of ``max_seqlen``: 0 for a model
    without attention mixers, else ``max_seqlen`` rounded up to a multiple of
    :data:`KV_CAPACITY_STEP`."""
    if not uses_kv_cache(model):
        return 0
    return -(-max(max_seqlen, 1) // KV_CAPACITY_STEP) * KV_CAPACITY_STEP


@dataclass
class _ModelGraphs:
    weights: tuple[tuple[int, torch.dtype], ...]  # the addresses the graphs read
    graphs: dict[tuple[Any, ...], DecodeGraph | str]  # key -> graph, or why it cannot be one


_CACHE: weakref.WeakKeyDictionary[nn.Module, _ModelGraphs] = weakref.WeakKeyDictionary()


def device_refusal(device: torch.device | str) -> str | None:
    """Why decoding on ``device`` cannot use a CUDA graph (None: it can, as far as the device goes)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the model decodes on {device.type}; CUDA graphs need a CUDA device"
    return None


@torch.inference_mode()
def decode_graph(
    model: nn.Module, batch_size: int, device: torch.device | str, max_seqlen: int = 1
) -> DecodeGraph:
    """The captured decoding step of ``model`` for ``batch_size`` sequences of up to
    ``max_seqlen`` tokens (prompt included; only attention layers' caches depend on it) on
    ``device``, captured on first use and then reused. Raises :class:`GraphUnsupportedError`
    saying why when the step cannot be a graph (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    refusal = device_refusal(device)
    if refusal is not None:
        raise GraphUnsupportedError(refusal)
    weights = _weights(model)
    cached = _CACHE.get(model)
    if cached is None or cached.weights != weights:
        cached = _CACHE[model] = _ModelGraphs(weights, {})  # stale graphs are freed here
    capacity = kv_capacity(model, max_seqlen)
    key = (batch_size, device, capacity, _kernel_choices(model, device, weights))
    found = cached.graphs.pop(key, None)
    if found is None:
        found = _capture(model, batch_size, device, capacity)
    cached.graphs[key] = found  # (re)inserted last: the most recently used
    while len(cached.graphs) > MAX_GRAPHS_PER_MODEL:
        del cached.graphs[next(iter(cached.graphs))]
    if isinstance(found, str):
        raise GraphUnsupportedError(found)
    return found


def clear_decode_graphs(model: nn.Module) -> None:
    """Free the graphs captured for ``model`` (their memory pools and states)."""
    _CACHE.pop(model, None)


def _capture(
    model: nn.Module, batch_size: int, device: torch.device, capacity: int
) -> DecodeGraph | str:
    """A new graph of ``model.step`` (KV caches of ``capacity`` tokens), or the reason it
    cannot be captured."""
    state = model.allocate_state(batch_size, max(capacity, 1), device=device)
    for part in state_parts(state):
        if isinstance(part, KVCache):
            part.static = True
        elif not isinstance(part, SSMState):
            return (
                f"a layer keeps a {type(part).__name__}, which is neither an SSM state nor an "
                "attention KV cache, so the step's shapes may change every token"
            )
    input_ids = torch.zeros(batch_size, dtype=torch.long, device=device)

    # Warm up on a side stream (lazy initialisation must not land on the capturing stream),
    # refusing every operation that would make the host wait for the GPU.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    debug_mode = torch.cuda.get_sync_debug_mode()
    try:
        with torch.cuda.stream(side):
            torch.cuda.set_sync_debug_mode("error")
            for _ in range(WARMUP_STEPS):
                model.step(input_ids, state)
    except RuntimeError as err:
        if SYNC_ERROR not in str(err):
            raise
        return f"a decoding step synchronises with the host ({str(err).strip().splitlines()[0]})"
    finally:
        torch.cuda.set_sync_debug_mode(debug_mode)
    torch.cuda.current_stream(device).wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.step(input_ids, state)
    found = DecodeGraph(graph, input_ids, state, logits)
    found.reset()  # the warm-up filled KV positions and advanced the host's lengths
    return found


def _weights(model: nn.Module) -> tuple[tuple[int, torch.dtype], ...]:
    """Address and dtype of every parameter and buffer: the memory a captured graph reads."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((t.data_ptr(), t.dtype) for t in tensors)


def _kernel_choices(model: nn.Module, device: torch.device, weights: tuple) -> tuple[str, ...]:
    """The implementations the step's ops would use here, as a step chooses them (the
    environment, the model's ``kernels`` and each mixer's own): a graph replays the kernels of
    its capture, so another choice needs another graph."""
    dtype = weights[0][1] if weights else None
    mixer_scopes = {None}  # the mixers without a choice of their own, then each distinct one
    for module in model.modules():
        if isinstance(module, TokenMixer) and module.kernels:
            mixer_scopes.add(tuple(sorted(module.kernels.items())))
    choices = []
    with kernel_scope(getattr(model, "kernels", None)):
        for scope in sorted(mixer_scopes, key=str):
            with kernel_scope(dict(scope) if scope else None):
                for op in DECODE_OPS:
                    try:
                        choices.append(choose_kernel(op, device=device, dtype=dtype).impl)
                    except MambaverseError as err:  # an op this model may not use
                        choices.append(f"unavailable: {err}")
    return tuple(choices)
