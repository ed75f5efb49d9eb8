"""Decoding with a captured CUDA graph of the step gives the tokens of eager decoding.

The CPU tests check the option's rules and generate's use of a graph (prefill into the graph's
state, one replay per step, a reused output buffer) with an eager stand-in for the graph; the
GPU tests (``pytest -m gpu``) capture real graphs and compare greedy tokens with eager ones.
"""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.plugins.mamba_lm import decode_graph as decode_graph_module
from mambaverse.plugins.mamba_lm import generation
from mambaverse.plugins.mamba_lm.decode_graph import (
    _CACHE,
    KV_CAPACITY_STEP,
    MAX_GRAPHS_PER_MODEL,
    DecodeGraph,
    GraphUnsupportedError,
    clear_decode_graphs,
    decode_graph,
    kv_capacity,
    state_parts,
)
from mambaverse.plugins.mixers.attention import Attention, KVCache

from .test_decoding import tiny_lm
from .test_gpu import MAMBA2_GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_off_cuda_none_decodes_eagerly_and_true_says_why_not():
    model = tiny_lm("mamba", dtype=torch.float32)
    prompt = torch.randint(0, 50, (2, 4))
    eager = model.generate(prompt, max_new_tokens=5, cuda_graph=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=5), eager)  # None: eager on the CPU
    with pytest.raises(
        GraphUnsupportedError, match="cuda_graph=True, but the model decodes on cpu"
    ):
        model.generate(prompt, max_new_tokens=5, cuda_graph=True)
    with pytest.raises(GraphUnsupportedError, match="need a CUDA device"):
        decode_graph(model, 2, "cpu")


class EagerReplay:
    """Stands in for ``torch.cuda.CUDAGraph`` on the CPU: ``replay`` runs the step eagerly on the
    fixed buffers, writing into the same output tensor every time, as a graph does — and, as a
    graph, leaves the host-side KV cache lengths alone (no Python runs in a replay)."""

    def __init__(self, model, graph: DecodeGraph) -> None:
        self.model, self.buffers, self.replays = model, graph, 0

    def replay(self) -> None:
        self.replays += 1
        g = self.buffers
        lengths = [cache.length for cache in g.kv_caches]
        g.logits.copy_(self.model.step(g.input_ids, g.state))
        for cache, length in zip(g.kv_caches, lengths):
            cache.length = length


def stand_in_graph(model, batch: int, max_seqlen: int = 1) -> DecodeGraph:
    """A DecodeGraph as decode_graph captures it (static KV caches of the rounded capacity),
    replayed eagerly."""
    state = model.allocate_state(batch, max(kv_capacity(model, max_seqlen), 1))
    for part in state_parts(state):
        if isinstance(part, KVCache):
            part.static = True
    graph = DecodeGraph(None, torch.zeros(batch, dtype=torch.long), state, None)
    graph.logits = torch.empty(batch, model.padded_vocab_size, dtype=model.lm_head.weight.dtype)
    graph.graph = EagerReplay(model, graph)
    return graph


@pytest.mark.parametrize("cuda_graph", [True, None])
@pytest.mark.parametrize("mixer", ["mamba", "mamba2", "attention"])
def test_generate_prefills_into_the_graph_state_and_replays_once_per_step(
    mixer, cuda_graph, monkeypatch
):
    model = tiny_lm(mixer, dtype=torch.float32)
    batch, new_tokens = 2, 6
    graph = stand_in_graph(model, batch, max_seqlen=5 + new_tokens)
    for part in state_parts(graph.state):  # an earlier sequence: generate must start afresh
        if isinstance(part, KVCache):
            part.length = 3
            part.filled.fill_(3)
        else:
            part.conv.normal_()
            part.ssm.normal_()
    monkeypatch.setattr(generation, "device_refusal", lambda device: None)
    monkeypatch.setattr(generation, "decode_graph", lambda model, batch, device, length: graph)

    prompt = torch.randint(0, 50, (batch, 5))
    # None too: on the CPU attention's kernel is SDPA, the static cache's step's (see below).
    with_graph = model.generate(prompt, max_new_tokens=new_tokens, cuda_graph=cuda_graph)
    assert graph.graph.replays == new_tokens - 1  # the last token needs no step
    assert torch.equal(with_graph, model.generate(prompt, new_tokens, cuda_graph=False))
    for cache in graph.kv_caches:  # host and device positions agree: prompt + steps
        assert cache.length == int(cache.filled) == 5 + new_tokens - 1


def test_none_captures_attention_only_where_eager_steps_attend_with_sdpa(monkeypatch):
    """A static KV cache's step attends with torch SDPA: cuda_graph=None captures a model with
    attention layers only when its eager steps would use SDPA too (model config, environment)."""
    model = tiny_lm("attention", dtype=torch.float32)
    graph = stand_in_graph(model, 2, max_seqlen=5 + 4)
    monkeypatch.setattr(generation, "device_refusal", lambda device: None)
    monkeypatch.setattr(generation, "decode_graph", lambda model, batch, device, length: graph)
    prompt = torch.randint(0, 50, (2, 5))
    model.kernels = {"attention": "reference"}
    model.generate(prompt, max_new_tokens=4)
    assert graph.graph.replays == 0  # eager: the reference kernel is not the graph's
    model.generate(prompt, max_new_tokens=4, cuda_graph=True)
    assert graph.graph.replays == 3
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "attention=sdpa")  # overrides the model's choice
    model.generate(prompt, max_new_tokens=4)
    assert graph.graph.replays == 6


def test_graph_cache_keeps_the_most_recently_used_graphs(monkeypatch):
    """Each graph owns its state and memory pool: a model keeps MAX_GRAPHS_PER_MODEL of them."""
    model = tiny_lm("mamba", dtype=torch.float32)
    monkeypatch.setattr(decode_graph_module, "device_refusal", lambda device: None)
    monkeypatch.setattr(decode_graph_module, "_capture", lambda model, batch, device, cap: object())
    first = decode_graph(model, 1, "cuda:0")
    others = [decode_graph(model, batch, "cuda:0") for batch in range(2, MAX_GRAPHS_PER_MODEL + 1)]
    assert decode_graph(model, 1, "cuda:0") is first  # a hit: batch 1 is now the most recent
    decode_graph(model, MAX_GRAPHS_PER_MODEL + 1, "cuda:0")  # one too many: batch 2 goes
    assert len(_CACHE[model].graphs) == MAX_GRAPHS_PER_MODEL
    assert decode_graph(model, 1, "cuda:0") is first
    assert decode_graph(model, 2, "cuda:0") is not others[0]  # captured anew
    clear_decode_graphs(model)


def test_graph_cache_keys_on_the_models_and_mixers_kernel_choices(monkeypatch):
    """A graph replays the kernels it captured: switching the attention kernel in the model's
    or a mixer's ``kernels`` between two generations must capture another graph, and switching
    back finds the first again."""
    model = tiny_lm("attention", dtype=torch.float32)
    monkeypatch.setattr(decode_graph_module, "device_refusal", lambda device: None)
    monkeypatch.setattr(decode_graph_module, "_capture", lambda model, batch, device, cap: object())
    model.kernels = {"attention": "reference"}
    with_reference = decode_graph(model, 1, "cpu")
    model.kernels = {"attention": "sdpa"}
    with_sdpa = decode_graph(model, 1, "cpu")
    assert with_sdpa is not with_reference
    model.kernels = None
    mixer = next(m for m in model.modules() if isinstance(m, Attention))
    mixer.kernels = {"attention": "reference"}
    assert decode_graph(model, 1, "cpu") is not with_sdpa  # the mixer's choice counts too
    model.kernels, mixer.kernels = {"attention": "reference"}, None
    assert decode_graph(model, 1, "cpu") is with_reference
    clear_decode_graphs(model)


@pytest.mark.parametrize("name", ["attention", "zamba_micro"])
def test_static_kv_cache_steps_give_the_eager_logits(name):
    """The graph-capturable step (position on the device, the whole buffer under a mask, GQA)
    computes what the eager step computes, token after token, in float64; Zamba's states nest
    a KV cache and an SSM state per layer."""
    if name == "attention":
        model = tiny_lm("attention")  # 4 query heads, 2 kv heads
    else:
        torch.manual_seed(0)
        model = mambaverse.create_model(name).double().eval()
    vocab = model.vocab_size
    prompt = torch.randint(0, vocab, (2, 4))
    eager = model.allocate_state(2, 12)
    static = model.allocate_state(2, 12)
    static_caches = [p for p in state_parts(static) if isinstance(p, KVCache)]
    for cache in static_caches:
        cache.static = True
    with torch.inference_mode():
        torch.testing.assert_close(model(prompt, static), model(prompt, eager))
        for _ in range(8):
            token = torch.randint(0, vocab, (2,))
            torch.testing.assert_close(model.step(token, static), model.step(token, eager))
    eager_caches = [p for p in state_parts(eager) if isinstance(p, KVCache)]
    assert len(static_caches) == len(eager_caches) > 0
    assert all(c.length == int(c.filled) == 12 for c in static_caches)
    assert all(c.length == 12 for c in eager_caches)
    with pytest.raises(ValueError, match="exceed its max_seqlen 12"):
        model.step(torch.zeros(2, dtype=torch.long), static)


def test_a_full_graph_cache_refuses_the_step_before_replaying():
    model = tiny_lm("attention", dtype=torch.float32)
    graph = stand_in_graph(model, 1)
    graph.reset()
    for cache in graph.kv_caches:
        cache.length = cache.max_seqlen
    with pytest.raises(ValueError, match="exceed its max_seqlen 256"):
        graph.step(torch.zeros(1, dtype=torch.long))
    assert graph.graph.replays == 0


def test_kv_capacity_rounds_up_and_is_zero_without_attention():
    assert kv_capacity(tiny_lm("mamba"), 5000) == 0
    attention = tiny_lm("attention")
    assert kv_capacity(attention, 1) == KV_CAPACITY_STEP
    assert kv_capacity(attention, KV_CAPACITY_STEP + 1) == 2 * KV_CAPACITY_STEP


# -- on the GPU ----------------------------------------------------------------------------------
GPU_MIXERS = {"mamba": None, "mamba2": MAMBA2_GPU}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mixer", GPU_MIXERS)
@pytest.mark.gpu
@needs_cuda
def test_graph_decoding_gives_the_eager_tokens(mixer, dtype):
    model = tiny_lm(mixer, dtype=dtype, mixer_config=GPU_MIXERS[mixer]).cuda()
    graphs = []
    for batch in (1, 3, 1):
        prompt = torch.randint(0, 50, (batch, 7), device="cuda")
        eager = model.generate(prompt, max_new_tokens=24, cuda_graph=False)
        with_graph = model.generate(prompt, max_new_tokens=24, cuda_graph=True)
        assert torch.equal(with_graph, eager)
        graphs.append(decode_graph(model, batch, "cuda"))
    assert graphs[2] is graphs[0] and graphs[1] is not graphs[0]  # one graph per batch size
    clear_decode_graphs(model)


@pytest.mark.gpu
@needs_cuda
def test_graph_logits_equal_eager_steps_and_moved_weights_are_captured_anew():
    model = tiny_lm("mamba", dtype=torch.float32).cuda()
    graph = decode_graph(model, 2, "cuda")
    graph.reset()
    eager_state = model.allocate_state(2, 1, device="cuda")
    with torch.inference_mode():
        for _ in range(5):
            token = torch.randint(0, 50, (2,), device="cuda")
            expected = model.step(token, eager_state)
            torch.testing.assert_close(graph.step(token), expected, rtol=1e-5, atol=1e-5)
    model.to(torch.bfloat16)  # new weight tensors: the old graph would read freed memory
    assert decode_graph(model, 2, "cuda") is not graph
    prompt = torch.randint(0, 50, (2, 3), device="cuda")
    assert torch.equal(
        model.generate(prompt, 16, cuda_graph=True), model.generate(prompt, 16, cuda_graph=False)
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mixer", GPU_MIXERS)
def test_a_replay_follows_decay_rates_changed_in_place(mixer):
    """Each layer's A = -exp(A_log) is computed inside the captured step, so a replay after an
    in-place change of A_log (as an optimizer step makes) gives the eager step's logits."""
    model = tiny_lm(mixer, dtype=torch.float32, mixer_config=GPU_MIXERS[mixer]).cuda()
    graph = decode_graph(model, 2, "cuda")
    with torch.inference_mode():
        graph.reset()
        eager_state = model.allocate_state(2, 1, device="cuda")
        for step in range(4):
            if step == 2:
                for name, p in model.named_parameters():
                    if name.endswith("A_log"):
                        p.add_(0.3)
            token = torch.randint(0, 50, (2,), device="cuda")
            expected = model.step(token, eager_state)
            torch.testing.assert_close(graph.step(token), expected, rtol=1e-5, atol=1e-5)
    assert decode_graph(model, 2, "cuda") is graph  # same weights' memory: no new capture
    clear_decode_graphs(model)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("attention", None),  # a Transformer: every layer a static KV cache
        ("zamba_micro", {}),  # Mamba layers and a shared attention block (nested states)
    ],
)
def test_kv_cache_models_graph_decode_to_the_eager_tokens(name, overrides, dtype, monkeypatch):
    torch.manual_seed(0)
    # torch SDPA, as the benchmark's Transformer (Triton's tl.dot needs head_dim >= 16).
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "attention=sdpa")
    if name == "attention":
        model = tiny_lm("attention", dtype=dtype)
    else:
        model = mambaverse.create_model(name, **overrides).eval().to(dtype)
    model = model.cuda()
    for captured, length in enumerate((5, 300), start=1):  # capacities of 256 and 512 tokens
        prompt = torch.randint(0, 50, (2, length), device="cuda")
        eager = model.generate(prompt, max_new_tokens=12, cuda_graph=False)
        assert torch.equal(model.generate(prompt, max_new_tokens=12), eager)  # None: a graph
        assert len(_CACHE[model].graphs) == captured
        assert torch.equal(model.generate(prompt, max_new_tokens=12, cuda_graph=True), eager)
    clear_decode_graphs(model)


@pytest.mark.gpu
@needs_cuda
def test_models_a_graph_cannot_hold_decode_eagerly():
    # Jamba's MoE routing without attention: torch.where waits for the GPU.
    torch.manual_seed(0)
    overrides = {"layers": "mmmm", "mixer_config": {"mamba": {"d_state": 8}}}
    model = mambaverse.create_model("jamba_micro", **overrides).eval().cuda()
    prompt = torch.randint(0, 50, (2, 5), device="cuda")
    eager = model.generate(prompt, max_new_tokens=8, cuda_graph=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=8), eager)
    with pytest.raises(GraphUnsupportedError, match="synchronises with the host"):
        model.generate(prompt, max_new_tokens=8, cuda_graph=True)
