"""Shared fixtures: a fresh plugin catalogue, a toy plugin registered at run time, and exact
float32 matmuls for GPU comparisons."""

from __future__ import annotations

import pytest
import torch

from mambaverse import manager


@pytest.fixture
def fresh_catalogue():
    """Rediscover plugins before and after the test (for tests that install or register some)."""
    manager.reset()
    yield manager.catalogue
    manager.reset()


@pytest.fixture
def exact_torch_float32():
    """No TF32 in torch's matmuls and convolutions while the test runs: the reference side of a
    GPU comparison must not round its own float32 products to 10 mantissa bits."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
