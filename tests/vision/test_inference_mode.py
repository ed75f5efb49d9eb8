"""A model first run under torch.inference_mode() still trains afterwards (cached scan indices)."""

import pytest
import torch

import mambaverse


@pytest.mark.parametrize("name", ["vim_micro", "vmamba_micro"])
def test_training_after_inference_mode(name):
    model = mambaverse.create_model(name, num_classes=10, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)
    model(x).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
