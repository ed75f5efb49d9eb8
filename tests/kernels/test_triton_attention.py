"""Triton flash attention against the reference, forward and gradients of q, k, v.

Without CUDA the kernels run interpreted at tiny sizes; the tests marked ``gpu`` run them
compiled at long and odd lengths, head dims 32 to 256, grouped heads, causal and not.
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels.attention import attention as public_attention
from mambaverse.kernels.attention import reference
from mambaverse.kernels.attention import triton as kernels
from tests.kernels.triton_helpers import (
    DEVICE,
    gpu,
    grads,
    leaves,
    offsets_limit,
    rel_err,
    report,
    run_interpreted,
    tiny,
)

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def make_inputs(batch, heads, kv_heads, lq, lk, head_dim, v_dim=None, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "q": torch.randn(batch, heads, lq, head_dim, generator=gen).to(device),
        "k": torch.randn(batch, kv_heads, lk, head_dim, generator=gen).to(device),
        "v": torch.randn(batch, kv_heads, lk, v_dim or head_dim, generator=gen).to(device),
    }


def check(inputs, dtype, causal, tol=None, label=""):
    tol = tol or TOL[dtype]
    ours, ref = leaves(inputs, dtype), leaves(inputs, dtype, float64=True)
    args, ref_args = list(ours.values()), list(ref.values())
    o = kernels.attention(*args, causal=causal)
    o_ref = reference.attention(*ref_args, causal=causal)
    assert o.dtype == dtype
    errors = {"o": rel_err(o, o_ref)}
    weight = [torch.randn(o_ref.shape, dtype=torch.float64, device=o.device)]
    g = grads(lambda *a: kernels.attention(*a, causal=causal), args, weight)
    g_ref = grads(lambda *a: reference.attention(*a, causal=causal), ref_args, weight)
    for name, a, b in zip("qkv", g, g_ref):
        errors[f"d{name}"] = rel_err(a, b)
    report(label or f"attention {dtype}", errors, tol)


# -- tiny cases: interpreted on CPU (through test_interpreted), compiled on CUDA ---------------------
def test_interpreted():
    run_interpreted(__file__)


@tiny
@pytest.mark.parametrize(
    "shape, causal",
    [
        ((2, 4, 2, 37, 37, 32), True),  # grouped heads, ragged blocks of 16
        ((1, 2, 1, 20, 45, 24), True),  # lq < lk: causal aligned to the end; head_dim not 2^k
        ((1, 2, 2, 33, 19, 16), False),  # lq > lk
        ((1, 2, 1, 18, 18, 16, 40), True),  # v with its own head dim
        ((1, 2, 2, 9, 9, 8), False),  # head dim below the tensor cores' 16: padded
    ],
)
def test_matches_reference(shape, causal):
    check(make_inputs(*shape), torch.float32, causal, label=f"cpu {shape} causal={causal}")


@tiny
def test_query_that_sees_no_key_returns_zeros():
    # Causal with lq > lk: the first lq - lk queries precede every key.
    x = make_inputs(1, 1, 1, 20, 8, 16)
    o = kernels.attention(x["q"], x["k"], x["v"], causal=True)
    assert torch.equal(o[:, :, :12], torch.zeros_like(o[:, :, :12]))
    assert torch.isfinite(o).all()


@tiny
def test_public_op_dispatches_to_triton():
    x = make_inputs(1, 2, 1, 17, 17, 16)
    o = public_attention(x["q"], x["k"], x["v"], causal=True, impl="triton")
    o_ref = reference.attention(*(t.double() for t in x.values()), causal=True)
    assert rel_err(o, o_ref) < 1e-5


@tiny
def test_errors_name_the_problem(monkeypatch):
    x = make_inputs(1, 3, 2, 8, 8, 16)
    with pytest.raises(ValueError, match="3 heads, not a multiple of k's 2 heads"):
        kernels.attention(x["q"], x["k"], x["v"])
    with pytest.raises(ValueError, match=r"v has shape \(1, 2, 7, 16\); expected \(1, 2, 8, 16\)"):
        kernels.attention(x["q"][:, :2], x["k"], x["v"][:, :, :7])
    offsets_limit(monkeypatch, 8)
    with pytest.raises(ValueError, match=r"q of shape .* 32-bit .* impl='sdpa'"):
        kernels.attention(x["q"][:, :2], x["k"], x["v"])


# -- GPU: compiled, realistic and odd shapes ----------------------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 8, 2048, 2048, 64),
        (1, 8, 2, 1000, 1000, 128),  # grouped heads, ragged blocks
        (2, 4, 4, 333, 1111, 96),  # lq < lk (a query block after a cache); head_dim not 2^k
        (1, 4, 1, 257, 257, 32),
        (1, 2, 2, 500, 500, 256),
    ],
)
def test_gpu_matches_reference(shape, causal, dtype):
    if dtype == torch.float32 and shape[-1] > 128:
        pytest.skip("fp32 with head_dim 256 needs more shared memory than a block may take")
    check(
        make_inputs(*shape, device="cuda"),
        dtype,
        causal,
        label=f"gpu attention {shape} causal={causal} {dtype}",
    )
