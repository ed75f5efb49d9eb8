"""Attention: the reference and SDPA implementations against an explicit float64 softmax loop."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import attention
from mambaverse.kernels.attention import sdpa
from tests.kernels.oracles import attention_oracle, relative_error

F64 = torch.float64
IMPLS = ["reference", "sdpa"]


def qkv(batch, heads, kv_heads, queries, keys, head_dim, value_dim, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    shapes = (
        (batch, heads, queries, head_dim),
        (batch, kv_heads, keys, head_dim),
        (batch, kv_heads, keys, value_dim),
    )
    return [torch.randn(*shape, generator=gen, dtype=F64).to(dtype) for shape in shapes]


SHAPES = [  # batch, heads, kv_heads, queries, keys, head_dim, value_dim
    (2, 4, 4, 5, 5, 8, 8),  # plain multi-head self-attention
    (1, 4, 2, 3, 7, 8, 8),  # GQA, 3 new queries after 4 cached keys
    (2, 6, 2, 1, 9, 16, 16),  # one decoding step
    (1, 2, 1, 6, 6, 4, 6),  # multi-query, value dim differs from key dim
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_the_oracle(impl, shape, causal, scale):
    q, k, v = qkv(*shape, seed=sum(shape))
    out = attention(q, k, v, causal=causal, scale=scale, impl=impl)
    assert out.shape == (*q.shape[:3], v.shape[-1])
    assert relative_error(out, attention_oracle(q, k, v, causal, scale)) < 1e-12


@pytest.mark.parametrize("native_gqa", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_grouped_heads_with_and_without_torch_2_5_enable_gqa(native_gqa, causal, monkeypatch):
    """Before torch 2.5 SDPA has no enable_gqa: the kv heads are repeated instead (both paths
    run on this torch; the decoding graph's masked step uses the same helper)."""
    monkeypatch.setattr(sdpa, "_NATIVE_GQA", native_gqa)
    q, k, v = qkv(2, 6, 3, 5, 9, 8, 8, seed=3)
    out = attention(q, k, v, causal=causal, impl="sdpa")
    assert relative_error(out, attention_oracle(q, k, v, causal)) < 1e-12


def test_decoding_mask_is_aligned_to_the_end():
    """The last l queries of a causal self-attention over s tokens = causal attention of those l
    queries over all s keys."""
    q, k, v = qkv(1, 2, 2, 7, 7, 8, 8, seed=1)
    full = attention(q, k, v, causal=True, impl="reference")
    for impl in IMPLS:
        tail = attention(q[:, :, -3:], k, v, causal=True, impl=impl)
        assert relative_error(tail, full[:, :, -3:]) < 1e-13


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients(impl):
    q, k, v = (t.requires_grad_(True) for t in qkv(1, 4, 2, 3, 5, 4, 4, seed=2))
    attend = lambda *t: attention(*t, causal=True, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(attend, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs(impl, dtype, tolerance):
    q, k, v = qkv(2, 4, 2, 16, 16, 32, 32, seed=3, dtype=dtype)
    out = attention(q, k, v, causal=True, impl=impl)
    assert out.dtype == dtype
    assert relative_error(out, attention_oracle(q, k, v, causal=True)) < tolerance


def test_default_on_cpu_is_sdpa():
    import mambaverse

    assert mambaverse.choose_kernel("attention", device="cpu", dtype=torch.float32).impl == "sdpa"


@pytest.mark.parametrize(
    "shapes, causal, message",
    [
        (((1, 3, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)), False, "the number of query heads h=3"),
        (((1, 2, 4, 8), (1, 2, 4, 6), (1, 2, 4, 8)), False, "k must have shape (b, h_kv, s, d)"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)), False, "v must have shape (b, h_kv, s, e)"),
        (((1, 2, 6, 8), (1, 2, 4, 8), (1, 2, 4, 8)), True, "got l=6 queries and s=4 keys"),
        (((2, 4, 8),) * 3, False, "q must be (b, h, l, d), got shape (2, 4, 8)"),
    ],
)
def test_bad_inputs_say_what_was_expected(shapes, causal, message):
    q, k, v = (torch.randn(shape) for shape in shapes)
    with pytest.raises(ValueError, match="attention: ") as err:
        attention(q, k, v, causal=causal)
    assert message in str(err.value)


def test_mixed_dtypes_are_refused():
    q, k, v = qkv(1, 2, 2, 3, 3, 4, 4, seed=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="must share one dtype"):
        attention(q, k.double(), v)
