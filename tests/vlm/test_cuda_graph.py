"""Cobra decodes after its prefill with a captured CUDA graph of the language model's step, with
the tokens of eager decoding (``pytest -m gpu``; a local tokenizer, so no open_clip needed)."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.plugins.mamba_lm.decode_graph import GraphUnsupportedError

PROMPTS = ["what digit is this ?", "a digit", "what is this ?"]


def tiny_cobra(tokenizer_dir, seed: int = 0):
    torch.manual_seed(seed)
    model = mambaverse.create_model("cobra_tiny", tokenizer=str(tokenizer_dir))
    with torch.no_grad():  # away from the init, so that every part matters to the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_cobra_asks_for_a_graph_off_cuda_and_is_told_why_not(hf_tokenizer_dir):
    model = tiny_cobra(hf_tokenizer_dir)
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(GraphUnsupportedError, match="CUDA graphs need a CUDA device"):
        model.generate(images, max_new_tokens=3, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cobra_graph_decoding_gives_the_eager_answers(hf_tokenizer_dir):
    model = tiny_cobra(hf_tokenizer_dir).cuda()
    images = torch.rand(len(PROMPTS), 3, 16, 16, device="cuda")
    eager = model.generate(images, PROMPTS, max_new_tokens=12, cuda_graph=False)
    assert model.generate(images, PROMPTS, max_new_tokens=12, cuda_graph=True) == eager
    assert model.generate(images, PROMPTS, max_new_tokens=12) == eager  # None: a graph on CUDA

    # The token ids themselves, without end-of-text stopping the answers early.
    lm = model.language_model
    with torch.inference_mode():
        image_tokens = model.embed_images(images)
    prompt = torch.randint(0, lm.vocab_size, (len(PROMPTS), 6), device="cuda")
    options = {"max_new_tokens": 32, "prefix_embeds": image_tokens}
    with_graph = lm.generate(prompt, cuda_graph=True, **options)
    assert torch.equal(with_graph, lm.generate(prompt, cuda_graph=False, **options))
