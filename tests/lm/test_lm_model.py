"""The mamba_lm backbone: config handling, weight tying, initialisation, checkpoint errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import mambaverse
from mambaverse.errors import ConfigError
from mambaverse.plugins.mamba_lm.convert import from_hf_mamba, from_hf_mamba2


@pytest.mark.parametrize("preset", ["mamba_micro", "mamba2_micro"])
def test_micro_presets_run_and_save_and_load(preset, tmp_path):
    model = mambaverse.create_model(preset).eval()
    input_ids = torch.randint(0, 256, (2, 21))
    with torch.no_grad():
        logits = model(input_ids)
    assert logits.shape == (2, 21, model.padded_vocab_size)
    mambaverse.save_pretrained(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(mambaverse.load_pretrained(tmp_path).eval()(input_ids), logits)


def test_vocabulary_is_padded_and_the_head_tied():
    model = mambaverse.create_model("mamba_micro", vocab_size=250, pad_vocab_size_multiple=16)
    assert model.embedding.weight.shape == (256, 64)
    assert model.lm_head.weight is model.embedding.weight
    untied = mambaverse.create_model("mamba_micro", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embedding.weight
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 256 * 64


def test_out_proj_init_is_scaled_by_one_over_sqrt_n_layer():
    def out_proj(rescale):
        torch.manual_seed(0)
        model = mambaverse.create_model("mamba2_micro", n_layer=4, rescale_prenorm_residual=rescale)
        return model.layers[2].mixer.out_proj.weight

    torch.testing.assert_close(out_proj(True) * math.sqrt(4), out_proj(False))


def test_embedding_init_uses_initializer_range():
    model = mambaverse.create_model("mamba_micro", vocab_size=4096, initializer_range=0.05)
    assert abs(model.embedding.weight.std().item() - 0.05) < 0.003


def test_layernorm_variant_builds_layernorms():
    model = mambaverse.create_model("mamba_micro", norm="layernorm")
    assert isinstance(model.norm_f, torch.nn.LayerNorm)
    assert model(torch.randint(0, 256, (1, 3))).shape == (1, 3, 256)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"mixer": "mlp"}, ConfigError, "'mlp' is a channel mixer"),
        ({"mixer": "mamba3"}, mambaverse.UnknownNameError, "unknown mixer 'mamba3'"),
        ({"norm": "batchnorm"}, mambaverse.UnknownNameError, "unknown norm 'batchnorm'"),
        ({"mixer_config": {"d_stat": 4}}, ConfigError, "did you mean 'd_state'"),
        ({"n_layers": 4}, ConfigError, "did you mean 'n_layer'"),
    ],
)
def test_bad_model_config_is_named(overrides, error, message):
    with pytest.raises(error, match=message):
        mambaverse.create_model("mamba_micro", **overrides)


def test_input_ids_must_be_integer_batches():
    model = mambaverse.create_model("mamba_micro")
    with pytest.raises(ValueError, match=r"expected integer token ids \(batch, length\)"):
        model(torch.randint(0, 256, (7,)))
    with pytest.raises(ValueError, match=r"got torch\.float32"):
        model(torch.zeros(1, 4))


@pytest.mark.parametrize("name", ["mamba_micro", "jamba_micro"])
def test_token_ids_outside_the_vocabulary_are_named(name):
    model = mambaverse.create_model(name)
    rows = model.embedding.num_embeddings
    ids = torch.randint(0, rows, (2, 5))
    ids[0, 0], ids[1, 3] = 0, rows
    with pytest.raises(ValueError, match=rf"must lie in \[0, {rows}\), got ids from 0 to {rows}"):
        model(ids)
    state = model.allocate_state(2, 8)
    with pytest.raises(ValueError, match=rf"got ids from -1 to {rows - 1}"):
        model.step(torch.tensor([-1, rows - 1]), state)
    assert model(ids.clamp(max=rows - 1)).shape == (2, 5, rows)


def test_converters_refuse_what_they_cannot_represent():
    hf = {"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 1, "vocab_size": 10}
    with pytest.raises(ConfigError, match="hidden_act 'gelu' is not supported"):
        from_hf_mamba({**hf, "hidden_act": "gelu"}, {})
    with pytest.raises(ConfigError, match="intermediate_size 40 != expand·hidden_size 32"):
        from_hf_mamba({**hf, "intermediate_size": 40}, {})
    untied = {
        **hf,
        "model_type": "mamba2",
        "num_heads": 4,
        "head_dim": 8,
        "tie_word_embeddings": False,
    }
    embedding = {"backbone.embeddings.weight": torch.zeros(10, 16)}
    with pytest.raises(ConfigError, match=r"no lm_head\.weight"):
        from_hf_mamba2(untied, embedding)
    with pytest.raises(ConfigError, match=r"num_heads·head_dim = 24 != expand·hidden_size = 32"):
        from_hf_mamba2({**untied, "num_heads": 3}, embedding)


def test_unsupported_hf_model_type_lists_mamba_and_mamba2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    with pytest.raises(mambaverse.UnknownNameError, match=r"supported: .*\bmamba\b.*\bmamba2\b"):
        mambaverse.load_pretrained(tmp_path)


def test_another_mixer_than_the_preset_s_names_the_preset_s_mixer_config():
    with pytest.raises(mambaverse.ConfigError) as err:
        mambaverse.create_model("mamba_micro", mixer="attention")
    message = str(err.value)
    assert message.startswith("mamba_lm: unknown mixer 'attention' config key 'd_conv'")
    assert "valid keys: causal, head_dim" in message
    assert "with mixer='attention' give mixer_config that mixer's keys, or {}" in message
    model = mambaverse.create_model("mamba_micro", mixer="attention", mixer_config={})
    assert model(torch.randint(0, model.vocab_size, (1, 5))).shape[:2] == (1, 5)


@pytest.mark.parametrize("name", ["mamba_micro", "mamba2_micro", "jamba_micro"])
def test_a_decoding_state_of_another_batch_size_is_named(name):
    model = mambaverse.create_model(name).eval()
    state = model.allocate_state(1, 16)
    with pytest.raises(ValueError) as err:
        model.step(torch.tensor([1, 2]), state)
    assert "the decoding state was allocated for batch 1, got a batch of 2" in str(err.value)
    assert "allocate_state(batch_size=2, ...)" in str(err.value)
