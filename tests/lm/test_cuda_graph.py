"""Decoding with a captured CUDA graph of the step gives the tokens of eager decoding.

The CPU tests check the option's rules and generate's use of a graph (prefill into the graph's
state, one replay per step, a reused output buffer) with an eager stand-in for the graph; the
GPU tests (``pytest -m gpu``) capture real graphs and compare greedy tokens with eager ones.
"""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.plugins.mamba_lm import generation
from mambaverse.plugins.mamba_lm.decode_graph import (
    DecodeGraph,
    GraphUnsupportedError,
    clear_decode_graphs,
    decode_graph,
)

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
    fixed buffers, writing into the same output tensor every time, as a graph does."""

    def __init__(self, model, graph: DecodeGraph) -> None:
        self.model, self.buffers, self.replays = model, graph, 0

    def replay(self) -> None:
        self.replays += 1
        g = self.buffers
        g.logits.copy_(self.model.step(g.input_ids, g.state))


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_generate_prefills_into_the_graph_state_and_replays_once_per_step(mixer, monkeypatch):
    model = tiny_lm(mixer, dtype=torch.float32)
    batch, new_tokens = 2, 6
    state = model.allocate_state(batch, 1)
    for layer_state in state:  # left over from an earlier sequence: generate must start afresh
        layer_state.conv.normal_()
        layer_state.ssm.normal_()
    logits = torch.empty(batch, model.padded_vocab_size)
    graph = DecodeGraph(None, torch.zeros(batch, dtype=torch.long), state, logits)
    graph.graph = EagerReplay(model, graph)
    monkeypatch.setattr(generation, "device_refusal", lambda device: None)
    monkeypatch.setattr(generation, "decode_graph", lambda model, batch, device: graph)

    prompt = torch.randint(0, 50, (batch, 5))
    with_graph = model.generate(prompt, max_new_tokens=new_tokens, cuda_graph=True)
    assert graph.graph.replays == new_tokens - 1  # the last token needs no step
    assert torch.equal(with_graph, model.generate(prompt, new_tokens, cuda_graph=False))


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
@pytest.mark.parametrize(
    "name, overrides, reason",
    [
        ("attention", None, "keeps a KVCache"),
        (  # Jamba's MoE routing without attention: torch.where waits for the GPU
            "jamba_micro",
            {"layers": "mmmm", "mixer_config": {"mamba": {"d_state": 8}}},
            "synchronises with the host",
        ),
    ],
)
def test_models_a_graph_cannot_hold_decode_eagerly(name, overrides, reason, monkeypatch):
    torch.manual_seed(0)
    if name == "attention":
        # torch SDPA, as the benchmark's Transformer (Triton's tl.dot needs head_dim >= 16).
        monkeypatch.setenv("MAMBAVERSE_KERNELS", "attention=sdpa")
        model = tiny_lm("attention", dtype=torch.float32)
    else:
        model = mambaverse.create_model(name, **overrides).eval()
    model = model.cuda()
    prompt = torch.randint(0, 50, (2, 5), device="cuda")
    eager = model.generate(prompt, max_new_tokens=8, cuda_graph=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=8), eager)
    with pytest.raises(GraphUnsupportedError, match=reason):
        model.generate(prompt, max_new_tokens=8, cuda_graph=True)
