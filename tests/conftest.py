"""Shared fixtures: a fresh plugin catalogue, a toy plugin registered at run time, and exact
float32 matmuls for GPU comparisons."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mambaverse import manager

ROOT = Path(__file__).resolve().parents[1]


def _import_installed_kernels_package() -> None:
    """Bind ``kernels`` to the installed Hugging Face package, when there is one.

    pytest puts the repository root first on sys.path (``tests`` is a package), where our
    ``kernels/`` folder (the source of ``mambaverse.kernels``) would answer ``import kernels``;
    transformers >= 5 imports the Hub's ``kernels`` package at import time and then fails on
    ours. Imported first from the other sys.path entries, the real one is what it finds.
    """
    if "kernels" in sys.modules:
        return
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)


_import_installed_kernels_package()


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
