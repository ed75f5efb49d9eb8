"""The scaling suite's ``--cuda-graph``: a training step (forward + backward) captured in one CUDA
graph computes the gradients the eager step computes, for every compared model, and the suite
reports its throughput. GPU only, except the refusal on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mambaverse.bench.language_models import preset_family
from mambaverse.bench.measure import graphed
from mambaverse.bench.scaling import training_step
from mambaverse.cli import main


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mamba", "mamba2", "hybrid", "transformer"])
def test_a_graphed_step_computes_the_eager_gradients(model):
    device = torch.device("cuda")
    (spec,) = preset_family("micro", models=[model], attention_impls=["sdpa"])
    net = spec.build(device, torch.float32)
    net.train()
    step = training_step(net, 2, 64, device)
    step()
    eager = [p.grad.clone() for p in net.parameters()]
    replay = graphed(step)
    for p in net.parameters():  # the replay must write them, not find them
        p.grad.fill_(float("nan"))
    replay()
    torch.cuda.synchronize()
    for p, g in zip(net.parameters(), eager, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_the_suite_reports_graphed_steps(tmp_path: Path):
    out = tmp_path / "sc"
    argv = ["bench", "scaling", "--smoke", "--device", "cuda", "--parts", "train", "--cuda-graph"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "scaling.json").read_text())["training"]
    assert rows and all(r["graph_status"] == "ok" and r["tokens_per_s_graph"] > 0 for r in rows)
