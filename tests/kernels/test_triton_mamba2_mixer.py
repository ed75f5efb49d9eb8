"""The Mamba-2 mixer on the Triton kernels against itself on the reference kernels: output and
every gradient, through the splits whose gradients the kernels write in place
(``split_sharing_grad``: the convolution's ∂L/∂x, the gated norm's ∂L/∂z and the SSD's ∂L/∂x,
∂L/∂B, ∂L/∂C land in the in_proj and convolution gradients directly; ∂L/∂dt is copied in).

Interpreted on the CPU at a tiny width (two chunks, a ragged one, two groups); on the GPU at
Mamba-2-130m's width, where the pieces' row strides (3352, 1792) are those of training.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mambaverse.kernels import shared_grad
from mambaverse.plugins.mixers.mamba2 import Mamba2
from tests.kernels.triton_helpers import DEVICE, gpu, rel_err, report, run_interpreted, tiny

TRITON = dict.fromkeys(("causal_conv1d", "gated_rms_norm", "ssd_scan"), "triton")
REFERENCE = dict.fromkeys(TRITON, "reference")
TOL = {torch.float32: 2e-3, torch.bfloat16: 3e-2}  # fp32: TF32 inside the SSD's matmuls


def count_slots(monkeypatch) -> list[str]:
    """The kernels that got a slot (a region of a split's gradient buffer) in the backward."""
    used = []
    for op in TRITON:
        module = importlib.import_module(f"mambaverse.kernels.{op}.triton")

        def counted(x, op=op):
            slot = shared_grad.grad_slot(x)
            if slot is not None:
                used.append(op)
            return slot

        monkeypatch.setattr(module, "grad_slot", counted)
    return used


def check(config: dict, batch: int, length: int, dtype: torch.dtype, seed: int = 0) -> None:
    torch.manual_seed(seed)
    mixer = Mamba2(**config).to(DEVICE)
    u = torch.randn(batch, length, config["dim"], device=DEVICE)
    upstream = torch.randn(batch, length, config["dim"], device=DEVICE)
    results = {}
    for label, kernels in (("triton", TRITON), ("reference", REFERENCE)):
        model = mixer.to(torch.float64 if label == "reference" else dtype)
        model.kernels = kernels
        model.zero_grad(set_to_none=True)
        x = u.to(dtype).to(next(model.parameters()).dtype).detach().clone().requires_grad_()
        out = model(x)
        (out.double() * upstream.double()).sum().backward()
        results[label] = {"out": out, "du": x.grad}
        results[label].update({f"d{n}": p.grad for n, p in model.named_parameters()})
    # The reference ran last in float64 on the same (rounded) weights: the triton run came first.
    errors = {k: rel_err(v, results["reference"][k]) for k, v in results["triton"].items()}
    report(f"mamba2 mixer {config} b{batch} l{length} {dtype}", errors, TOL[dtype])


def test_interpreted():
    run_interpreted(__file__)


@tiny
def test_gradients_through_the_shared_splits_match_the_reference(monkeypatch):
    used = count_slots(monkeypatch)
    config = dict(dim=32, d_state=16, headdim=16, ngroups=2, chunk_size=16)
    check(config, batch=2, length=37, dtype=torch.float32)
    # the convolution's ∂L/∂x, the norm's ∂L/∂z, the SSD's ∂L/∂x, ∂L/∂B, ∂L/∂C (head splits: 2)
    assert sorted(used) == ["causal_conv1d", "gated_rms_norm"] + ["ssd_scan"] * 3


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_at_mamba2_130m_width(dtype):
    check(dict(dim=768, d_state=128, headdim=64, ngroups=1, chunk_size=256), 2, 700, dtype)
