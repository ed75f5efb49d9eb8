"""The tiny presets learn scikit-learn's digits on the CPU.

Fast: a few optimiser steps lower the loss on a fixed batch. Slow: the shared training loop
(``mambaverse.train``) reaches at least 90% test accuracy.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mambaverse

MICRO = ["vim_micro", "vmamba_micro", "efficientvmamba_micro", "simba_micro"]


def digits(count: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images[:count], dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate((images - images.mean()) / images.std(), size=size, mode="bilinear")
    return images, torch.tensor(data.target[:count])


@pytest.mark.parametrize("name", MICRO)
def test_loss_falls_in_a_few_steps(name):
    torch.manual_seed(0)
    images, labels = digits(96)
    model = mambaverse.create_model(name, num_classes=10, in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_on_all() -> float:
        # In training mode: BatchNorm (EfficientVMamba, SiMBA's stem) then normalises with the
        # batch's statistics, which a few steps cannot have settled in its running estimates.
        with torch.no_grad():
            return F.cross_entropy(model(images), labels).item()

    before = loss_on_all()
    for step in range(8):
        batch = slice(32 * (step % 3), 32 * (step % 3 + 1))
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = loss_on_all()
    assert after < 0.8 * before, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name", MICRO)
def test_reaches_90_percent_with_the_shared_training_loop(name, tmp_path):
    from mambaverse.train import load_config, train

    overrides = [
        f"model.name={name}",
        "epochs=6",
        "optim.lr=2e-3",
        f"output_dir={tmp_path}",
        "log_every=1000",
    ]
    summary = train(load_config(None, overrides))
    assert summary["test_accuracy"] >= 0.90, summary
