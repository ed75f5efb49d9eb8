"""The training loss includes a model's auxiliary loss (the MoE router's load balancing)."""

import torch

import mambaverse
from mambaverse.train.tasks import auxiliary_loss


def test_router_loss_is_weighted_and_carries_gradient_to_the_router():
    torch.manual_seed(0)
    model = mambaverse.create_model("jamba_micro")
    model(torch.randint(0, 32, (2, 7)))
    extra = auxiliary_loss(model)
    assert torch.is_tensor(extra) and extra.item() > 0
    assert torch.allclose(extra, model.aux_loss_coef * model.aux_loss)
    extra.backward()
    routers = [p for name, p in model.named_parameters() if "router" in name]
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)


def test_models_without_one_add_nothing():
    assert auxiliary_loss(torch.nn.Linear(2, 2)) == 0.0
