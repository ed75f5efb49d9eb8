"""On the accelerator (``pytest -m gpu``): the hybrid models with the CUDA default kernels
(Triton scans, attention) against the same weights on the CPU with the reference kernels, which
the CPU tests check against transformers."""

from __future__ import annotations

import pytest
import torch

import mambaverse

from .hf_models import VOCAB, random_hf_lm
from .test_hf_parity import CASES, PARAMS, relative_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("exact_torch_float32"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Triton's fp32 dot products use TF32 (10-bit mantissa) inside the chunked scans.
FLOAT32_TOLERANCE = 2e-3
# The scans run on their CUDA default (Triton); attention on torch's SDPA, since these tiny test
# models have head dims (4 to 16) below what the Triton attention kernel compiles for.
KERNELS = {"attention": "sdpa"}
# The Triton SSD scan compiles only for chunk_size and d_state of 16 or more (tl.dot's K >= 16;
# measured on an H100, Triton 3.6): the Mamba-2 cases run widened to that.
WIDER = {
    "bamba": {"hidden_size": 32, "mamba_n_heads": 4, "mamba_d_state": 16, "mamba_chunk_size": 16},
    "zamba2": {"hidden_size": 32, "n_mamba_heads": 4, "mamba_d_state": 16, "chunk_size": 16},
}


@pytest.mark.parametrize(("model_type", "case"), PARAMS)
def test_cuda_kernels_match_the_cpu_reference(model_type, case, tmp_path):
    pytest.importorskip("transformers")
    config = {**CASES[model_type][case][0], **WIDER.get(model_type, {})}
    random_hf_lm(model_type, **config).save_pretrained(tmp_path)
    cpu = mambaverse.load_pretrained(tmp_path).eval()
    gpu = mambaverse.load_pretrained(tmp_path, kernels=KERNELS).cuda().eval()
    input_ids = torch.randint(0, VOCAB, (2, 300))
    with torch.no_grad():
        expected = cpu(input_ids)
        logits = gpu(input_ids.cuda())
        # decoding with the one-step kernels continues the prefilled state
        state = gpu.allocate_state(2, max_seqlen=300)
        gpu(input_ids[:, :290].cuda(), state)
        steps = torch.stack([gpu.step(input_ids[:, t].cuda(), state) for t in range(290, 300)], 1)
    assert relative_error(logits.cpu(), expected) < FLOAT32_TOLERANCE
    assert relative_error(steps.cpu(), expected[:, 290:]) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("name", ["jamba_micro", "bamba_micro", "zamba_micro", "zamba2_micro"])
def test_bfloat16_generation_runs_on_cuda(name):
    model = mambaverse.create_model(name, kernels=KERNELS).cuda().to(torch.bfloat16).eval()
    out = model.generate(torch.randint(0, 256, (2, 9), device="cuda"), max_new_tokens=8)
    assert out.shape == (2, 17) and out.device.type == "cuda"
