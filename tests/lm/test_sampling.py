"""Next-token choice: top-k / top-p filters by their definitions, and sampling frequencies."""

from __future__ import annotations

import pytest
import torch

from mambaverse.errors import ConfigError
from mambaverse.plugins.mamba_lm.sampling import check_sampling, filter_logits, next_token


def nucleus(probs: list[float], top_p: float) -> set[int]:
    """The smallest most-likely-first prefix of tokens whose probability reaches top_p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total >= top_p:
            break
    return kept


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.6, 0.9, 1.0])
def test_top_p_keeps_exactly_the_nucleus(top_p):
    logits = torch.randn(4, 30, dtype=torch.float64) * 2
    kept = filter_logits(logits, top_p=top_p).isfinite()
    for row in range(4):
        expected = nucleus(logits[row].softmax(-1).tolist(), top_p)
        assert set(kept[row].nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("top_k", [1, 3, 30, 100])
def test_top_k_keeps_the_k_largest(top_k):
    logits = torch.randn(5, 30)
    kept = filter_logits(logits, top_k=top_k).isfinite()
    expected = torch.zeros_like(kept).scatter(-1, logits.topk(min(top_k, 30)).indices, True)
    assert torch.equal(kept, expected)


def test_sampled_frequencies_follow_softmax_with_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40_000, 4)
    generator = torch.Generator().manual_seed(0)
    tokens = next_token(logits, do_sample=True, temperature=0.5, generator=generator)
    frequencies = torch.bincount(tokens, minlength=4) / tokens.numel()
    expected = (logits[0] / 0.5).softmax(-1)
    # 40k draws: the standard error of each frequency is below 0.0025.
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)


def test_greedy_is_argmax():
    logits = torch.randn(6, 11)
    assert torch.equal(next_token(logits, do_sample=False), logits.argmax(-1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_options_are_named(options, message):
    settings = {"temperature": 1.0, "top_k": None, "top_p": None, **options}
    with pytest.raises(ConfigError, match=message):
        check_sampling(**settings)
