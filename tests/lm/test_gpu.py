"""On the accelerator: the Triton kernels inside the language models (run with `pytest -m gpu`).

The yardstick is the same model on the CPU with the reference kernels, which the CPU tests check
against transformers (so these tests do not depend on the transformers release installed).
"""

from __future__ import annotations

import pytest
import torch

import mambaverse

from .hf_reference import random_hf_lm, save
from .test_decoding import MIXERS, tiny_lm
from .test_hf_parity import MAMBA_CASES, relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("exact_torch_float32"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TRITON = {
    op: "triton"
    for op in ("selective_scan", "selective_state_update", "ssd_scan", "ssd_state_update")
}
REFERENCE = dict.fromkeys(TRITON, "reference")
# Mamba-2 shapes at the Triton SSD kernel's minimum (tl.dot needs 16 along each dimension).
MAMBA2_GPU = {"headdim": 16, "d_state": 16, "ngroups": 2, "chunk_size": 32}
CASES = {
    "mamba": ("mamba", MAMBA_CASES["biases-untied-conv3"][0]),
    "mamba2-groups2": (
        "mamba2",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            state_size=16,
            num_heads=8,
            head_dim=16,
            n_groups=2,
            chunk_size=32,
        ),
    ),
    "mamba2-dt-limit": (
        "mamba2",
        dict(
            hidden_size=64,
            num_hidden_layers=1,
            expand=1,
            state_size=32,
            num_heads=4,
            head_dim=16,
            n_groups=4,
            chunk_size=16,
            conv_kernel=2,
            time_step_limit=(0.0, 0.05),
        ),
    ),
}
# Triton's fp32 dot products use TF32 (10-bit mantissa) inside the chunked scans.
FLOAT32_TOLERANCE = 2e-3


def cpu_and_gpu_models(case: str, tmp_path, seed: int = 0):
    model_type, hf_config = CASES[case]
    directory = save(random_hf_lm(model_type, seed=seed, **hf_config), tmp_path)
    cpu = mambaverse.load_pretrained(directory).eval()
    gpu = mambaverse.load_pretrained(directory, kernels=TRITON).cuda().eval()
    return cpu, gpu


@pytest.mark.parametrize("case", CASES)
def test_triton_forward_matches_the_cpu_reference(case, tmp_path):
    cpu, gpu = cpu_and_gpu_models(case, tmp_path)
    input_ids = torch.randint(0, cpu.vocab_size, (3, 300))
    with torch.no_grad():
        error = relative_error(gpu(input_ids.cuda()).cpu(), cpu(input_ids))
    assert error < FLOAT32_TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_triton_bfloat16_is_as_accurate_as_the_reference_kernels_in_bfloat16(case, tmp_path):
    cpu, gpu = cpu_and_gpu_models(case, tmp_path)
    input_ids = torch.randint(0, cpu.vocab_size, (2, 257))
    with torch.no_grad():
        exact = cpu(input_ids)
        triton = gpu.to(torch.bfloat16)(input_ids.cuda()).float().cpu()
        gpu.kernels = REFERENCE
        reference = gpu(input_ids.cuda()).float().cpu()
    # bfloat16 weights and activations dominate the error; the kernels must not add to it.
    assert relative_error(triton, exact) < 1.25 * relative_error(reference, exact) + 1e-3


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_triton_decoding_reproduces_the_forward(mixer):
    config = MAMBA2_GPU if mixer == "mamba2" else MIXERS[mixer]
    cpu = tiny_lm(mixer, dtype=torch.float32, mixer_config=config)
    gpu = tiny_lm(mixer, dtype=torch.float32, mixer_config=config).cuda()
    gpu.kernels = TRITON
    input_ids = torch.randint(0, 50, (3, 40))
    with torch.no_grad():
        expected = cpu(input_ids)
        state = gpu.allocate_state(3, max_seqlen=40)
        ids = input_ids.cuda()
        prefill = gpu(ids[:, :25], state)
        steps = torch.stack([gpu.step(ids[:, t], state) for t in range(25, 40)], dim=1)
    actual = torch.cat([prefill, steps], dim=1).cpu()
    assert relative_error(actual, expected) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("case", ["mamba", "mamba2-groups2"])
def test_greedy_generation_on_gpu_equals_the_cpu_one(case, tmp_path):
    cpu, gpu = cpu_and_gpu_models(case, tmp_path, seed=3)
    prompt = torch.randint(0, cpu.vocab_size, (2, 12))
    expected = cpu.generate(prompt, max_new_tokens=16)
    assert torch.equal(gpu.generate(prompt.cuda(), max_new_tokens=16).cpu(), expected)


@pytest.mark.parametrize("preset", ["mamba_130m", "mamba2_130m"])
def test_triton_kernels_at_the_published_shapes(preset):
    # Two layers of the real width, state size, head size and chunk size; a length of several chunks.
    torch.manual_seed(0)
    model = mambaverse.create_model(preset, n_layer=2).cuda().eval()
    input_ids = torch.randint(0, model.vocab_size, (2, 1000), device="cuda")
    with torch.no_grad():
        model.kernels = REFERENCE
        expected = model(input_ids)
        model.kernels = TRITON
        actual = model(input_ids)
    assert relative_error(actual, expected) < FLOAT32_TOLERANCE
