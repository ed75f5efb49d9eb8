"""On the accelerator: Vision Mamba and VMamba with the Triton kernels (run with `pytest -m gpu`).

The yardstick is the same model on the CPU with the reference kernels, run through the per-walk
path (walk, one SSM per walk, unwalk), which the CPU tests check against float64 re-implementations
of the papers' code; the GPU side takes the stacked path (one gather, one scan for all walks).
"""

from __future__ import annotations

import copy

import pytest
import torch

import mambaverse

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("exact_torch_float32"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MODELS = {
    "vim_tiny": {"img_size": 64, "depth": 3, "num_classes": 10, "drop_path_rate": 0.0},
    "vmamba_tiny": {"img_size": 64, "num_classes": 10, "drop_path_rate": 0.0},
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def per_walk_path(model: torch.nn.Module) -> None:
    for module in model.modules():
        walker = getattr(module, "walker", None)
        if walker is not None:
            walker.token_orders = lambda *args: None


@pytest.mark.parametrize("name", MODELS)
def test_training_step_matches_the_cpu_reference(name):
    torch.manual_seed(0)
    cpu = mambaverse.create_model(name, **MODELS[name]).train()
    gpu = copy.deepcopy(cpu).cuda()
    per_walk_path(cpu)
    images = torch.randn(4, 3, 64, 64)
    labels = torch.randint(0, 10, (4,))
    losses = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
        loss.backward()
        losses.append(loss)
    assert relative_error(losses[1], losses[0]) < 1e-5
    for (param_name, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        if p_cpu.grad is None:
            assert p_gpu.grad is None, param_name
            continue
        assert relative_error(p_gpu.grad, p_cpu.grad) < 1e-3, param_name


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_inference_matches_the_float32_reference(name):
    torch.manual_seed(0)
    cpu = mambaverse.create_model(name, **MODELS[name]).eval()
    gpu = copy.deepcopy(cpu).cuda().to(torch.bfloat16)
    per_walk_path(cpu)
    images = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        expected = cpu.forward_features(images)
        actual = gpu.forward_features(images.cuda().bfloat16())
    assert relative_error(actual, expected) < 3e-2
