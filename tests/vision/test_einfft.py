"""SiMBA's EinFFT channel mixer against the official formula (real arithmetic, float64)."""

from __future__ import annotations

import pytest
import torch

import mambaverse

from . import oracles


@pytest.mark.parametrize(("tokens", "dim", "blocks"), [(7, 16, 4), (12, 24, 3)])
def test_einfft_matches_official_formula(tokens, dim, blocks):
    torch.manual_seed(0)
    mixer = mambaverse.create_mixer("einfft", dim, num_blocks=blocks).double()
    # Larger weights than the 0.02 init, so that ReLU and the soft-shrink both cut something.
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(3, tokens, dim, dtype=torch.float64)
    expected = oracles.einfft(mixer, x)
    assert torch.allclose(mixer(x), expected, rtol=1e-10, atol=1e-12)
    assert (expected != 0).any() and (expected == expected).all()


def test_einfft_is_a_registered_channel_mixer():
    assert "einfft" in mambaverse.list_mixers("channel")


def test_einfft_keeps_dtype_and_differentiates():
    mixer = mambaverse.create_mixer("einfft", 8, num_blocks=2)
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    y = mixer(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    assert x.grad is not None and mixer.complex_weight_1.grad is not None


def test_einfft_bad_config_and_input():
    with pytest.raises(mambaverse.ConfigError, match="not a multiple of num_blocks"):
        mambaverse.create_mixer("einfft", 10, num_blocks=4)
    with pytest.raises(ValueError, match=r"expected input \(batch, length, 8\)"):
        mambaverse.create_mixer("einfft", 8)(torch.zeros(2, 5, 6))
