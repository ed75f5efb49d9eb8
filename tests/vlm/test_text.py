"""Offline tokenizers, prompt templates and the projector shapes of Cobra."""

from __future__ import annotations

import pytest
import torch

from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.plugins.cobra.projector import build_projector
from mambaverse.plugins.cobra.templates import get_template
from mambaverse.plugins.cobra.tokenizer import load_tokenizer


def test_open_clip_tokenizer_is_bundled_and_has_the_special_tokens():
    tok = load_tokenizer()
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()  # open_clip's own, without our <image> token
    assert tok.vocab_size == reference.vocab_size + 1 == 49409
    text = "a handwritten digit seven"
    assert tok.encode(text) == reference.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.eot_token_id == reference.encoder["<end_of_text>"]
    assert tok.image_token_id == 49408
    assert tok.decode([tok.image_token_id, *tok.encode("seven"), tok.eot_token_id]) == "seven"


def test_a_local_hugging_face_tokenizer_gets_image_and_end_of_text_tokens(hf_tokenizer_dir):
    tok = load_tokenizer(str(hf_tokenizer_dir))
    assert tok.vocab_size == 11 + 2
    assert {tok.image_token_id, tok.eot_token_id} == {11, 12}
    assert tok.encode("what digit is this ?") == [4, 5, 6, 7, 8]
    ids = get_template("plain").prompt_ids(tok, "What digit is this?")
    assert ids[0] == tok.image_token_id and ids[1:] == [1, 2, 4, 5, 6, 7, 8, 3, 2]


def test_a_missing_tokenizer_directory_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read a tokenizer"):
        load_tokenizer(str(tmp_path))  # empty directory


def test_templates_lay_out_cobra_prompts():
    tok = load_tokenizer()
    plain = get_template("plain").prompt_ids(tok, "What digit is this?")
    assert plain == [tok.image_token_id, *tok.encode("In: What digit is this?\nOut: ")]
    chat = get_template("chat").prompt_ids(tok, "<image> What digit is this?")
    # Zephyr: "<|user|>\n{prompt}<eot>\n<|assistant|>\n" with the real end-of-text token; a
    # literal <image> in the user's text is dropped (one image marker per prompt).
    user, assistant = tok.encode("<|user|>\nWhat digit is this?"), tok.encode("\n<|assistant|>\n")
    assert chat == [tok.image_token_id, *user, tok.eot_token_id, *assistant]
    assert chat.count(tok.image_token_id) == 1
    answer = get_template("chat").answer_ids(tok, " seven ")
    assert answer == [*tok.encode("seven"), tok.eot_token_id]
    with pytest.raises(UnknownNameError, match="'chat'"):
        get_template("chta")


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_projectors_have_cobras_shapes():
    vision, lm = 1024 + 1152, 2560  # Cobra-3B: DINOv2-L + SigLIP-So400m features -> Mamba-2.8B
    with torch.device("meta"):
        linear = build_projector("linear", vision, lm)
        mlp = build_projector("gelu-mlp", vision, lm)
        fused = build_projector("fused-gelu-mlp", vision, lm)
    assert param_count(linear) == vision * lm + lm
    assert param_count(mlp) == (vision * lm + lm) + (lm * lm + lm)
    hidden = 4 * vision  # FusedMLPProjector.initial_projection_dim
    assert param_count(fused) == (vision * hidden + hidden) + (hidden * lm + lm) + (lm * lm + lm)
    x = torch.randn(2, 5, 12)
    assert build_projector("fused-gelu-mlp", 12, 7)(x).shape == (2, 5, 7)
    with pytest.raises(UnknownNameError, match="'gelu-mlp'"):
        build_projector("gelu_mlp", 12, 7)
