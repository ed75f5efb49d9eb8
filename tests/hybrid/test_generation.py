"""Generation with the hybrid cache: greedy tokens equal transformers' ``generate``, and
step-by-step decoding reproduces the parallel forward."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.plugins.mamba_lm.generation import state_nbytes
from mambaverse.plugins.mixers.attention import Attention

from .hf_models import VOCAB, random_hf_lm
from .test_hf_parity import CASES

MICRO_PRESETS = ["jamba_micro", "bamba_micro", "zamba_micro", "zamba2_micro"]


@pytest.mark.parametrize("model_type", list(CASES))
def test_greedy_generation_matches_transformers(model_type, tmp_path):
    pytest.importorskip("transformers")
    config = next(iter(CASES[model_type].values()))[0]
    reference = random_hf_lm(model_type, **config)
    reference.save_pretrained(tmp_path)
    model = mambaverse.load_pretrained(tmp_path).eval()
    prompt = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    actual = model.generate(prompt, max_new_tokens=32)
    assert actual.shape == (2, 5 + 32)
    assert torch.equal(actual, expected)


def micro_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = mambaverse.create_model(name)
    with torch.no_grad():  # move norms, D and biases away from their regular init values
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


@pytest.mark.parametrize("name", MICRO_PRESETS)
@pytest.mark.parametrize("prompt_length", [1, 6])
def test_prefill_then_steps_reproduce_full_forward(name, prompt_length):
    model = micro_model(name)
    input_ids = torch.randint(0, model.vocab_size, (2, 19))  # several SSD chunks of 16
    with torch.no_grad():
        expected = model(input_ids)
        state = model.allocate_state(2, max_seqlen=19)
        prefill = model(input_ids[:, :prompt_length], state)
        steps = [model.step(input_ids[:, t], state) for t in range(prompt_length, 19)]
    actual = torch.cat([prefill, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "kv_caches"),
    [("jamba_micro", 1), ("bamba_micro", 1), ("zamba_micro", 2), ("zamba2_micro", 3)],
)
def test_only_the_kv_caches_grow_with_the_sequence(name, kv_caches):
    """SSM states have a fixed size; each attention layer (zamba: each application of a shared
    block) keeps keys and values of every token."""
    model = mambaverse.create_model(name)
    attention = next(m for m in model.modules() if isinstance(m, Attention))
    per_token = 2 * attention.num_kv_heads * attention.head_dim * 4  # keys and values, float32
    short, long = (state_nbytes(model.allocate_state(3, n)) for n in (10, 110))
    assert long - short == kv_caches * 3 * 100 * per_token
