"""The ``moe`` mixer against a dense evaluation of every expert, and its load-balancing loss
against transformers' implementation (Switch Transformer eqs. 4-6)."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.errors import ConfigError
from mambaverse.plugins.hybrid.moe import MoE, load_balancing_loss


def dense_moe(moe: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, kept only for the top-k: Σ_e [e ∈ top-k] p_e · expert_e(x)."""
    probs = moe.router(x).softmax(dim=-1)  # (..., E)
    kth = probs.topk(moe.top_k, dim=-1).values[..., -1:]
    weights = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    outputs = torch.stack([expert(x) for expert in moe.experts], dim=-2)  # (..., E, dim)
    return (weights[..., None] * outputs).sum(dim=-2)


@pytest.mark.parametrize(("num_experts", "top_k"), [(4, 2), (5, 1), (3, 3)])
def test_moe_equals_dense_evaluation(num_experts, top_k):
    torch.manual_seed(0)
    moe = mambaverse.create_mixer("moe", 16, num_experts=num_experts, top_k=top_k, hidden_dim=24)
    moe = moe.double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense_moe(moe, x), rtol=1e-12, atol=1e-12)
    assert moe.router_logits.shape == (14, num_experts)


def test_load_balancing_loss_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.models.jamba.modeling_jamba import load_balancing_loss_func

    torch.manual_seed(1)
    layers = [torch.randn(12, 6) for _ in range(3)]
    expected = load_balancing_loss_func(tuple(layers), num_experts=6, top_k=2)
    torch.testing.assert_close(load_balancing_loss(layers, top_k=2), expected)


def test_loss_is_top_k_for_perfect_balance_and_trains_the_router():
    moe = mambaverse.create_mixer("moe", 8, num_experts=4, top_k=2, hidden_dim=8)
    torch.nn.init.zeros_(moe.router.weight)  # uniform probabilities ...
    x = torch.randn(4, 8)
    moe(x)
    # ... and topk of equal values picks experts 0 and 1 for every token: f = (1, 1, 0, 0),
    # P = 1/4 each, so aux = 4 · (1/4 + 1/4) = 2 = k.
    torch.testing.assert_close(moe.aux_loss, torch.tensor(2.0))
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_hybrid_lm_sums_the_loss_over_its_moe_layers():
    model = mambaverse.create_model("jamba_micro")
    model(torch.randint(0, 256, (2, 9)))
    logits = [model.layers[i].ffn.router_logits for i in model.moe_layers]
    assert model.moe_layers == [1, 3]
    torch.testing.assert_close(model.aux_loss, load_balancing_loss(logits, top_k=2))


def test_bad_moe_config_is_one_clear_error():
    with pytest.raises(
        ConfigError, match=r"need 1 <= top_k <= num_experts, got top_k=3, num_experts=2"
    ):
        mambaverse.create_mixer("moe", 8, num_experts=2, top_k=3)


def test_an_expert_no_token_reaches_still_takes_part_in_the_backward():
    # DistributedDataParallel needs a gradient for every parameter on every step.
    moe = MoE(8, num_experts=4, top_k=1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 10.0  # positive inputs all go to expert 0
    moe(torch.rand(5, 8) + 0.1).sum().backward()
    for e, expert in enumerate(moe.experts):
        for name, p in expert.named_parameters():
            assert p.grad is not None, f"expert {e} {name}"
            assert (p.grad == 0).all() == (e != 0), f"expert {e} {name}"
