"""mamba_lm imports transformers' Mamba / Mamba-2 checkpoints with the same logits and generations."""

from __future__ import annotations

import inspect

import pytest
import torch

import mambaverse

from .hf_reference import random_hf_lm, save

pytest.importorskip("transformers")

MAMBA_CASES = {
    "default-shape": (dict(hidden_size=32, num_hidden_layers=2, state_size=8), 2, 11),
    "biases-untied-conv3": (
        dict(
            hidden_size=48,
            num_hidden_layers=3,
            state_size=4,
            expand=3,
            conv_kernel=3,
            time_step_rank=5,
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=False,
            layer_norm_epsilon=1e-6,
        ),
        3,
        7,
    ),
    "one-token": (dict(hidden_size=16, num_hidden_layers=1, state_size=16), 1, 1),
}

MAMBA2_CASES = {
    "groups2-length-not-chunk-multiple": (
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            state_size=8,
            num_heads=8,
            head_dim=8,
            n_groups=2,
            chunk_size=4,
        ),
        2,
        11,
    ),
    "tied-biases-several-chunks": (
        dict(
            hidden_size=24,
            num_hidden_layers=2,
            state_size=16,
            num_heads=6,
            head_dim=8,
            n_groups=1,
            chunk_size=8,
            tie_word_embeddings=True,
            use_bias=True,
            use_conv_bias=False,
        ),
        3,
        19,
    ),
    "groups4-dt-limit-conv2": (
        dict(
            hidden_size=32,
            num_hidden_layers=1,
            expand=1,
            state_size=4,
            num_heads=8,
            head_dim=4,
            n_groups=4,
            chunk_size=5,
            conv_kernel=2,
            time_step_limit=(0.0, 0.05),
            layer_norm_epsilon=1e-3,
        ),
        2,
        5,
    ),
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def _check_logits(model_type: str, hf_config: dict, batch: int, length: int, tmp_path) -> None:
    hf = random_hf_lm(model_type, **hf_config)
    ours = mambaverse.load_pretrained(save(hf, tmp_path)).eval()
    input_ids = torch.randint(0, hf.config.vocab_size, (batch, length))
    with torch.no_grad():
        expected = hf(input_ids).logits
        actual = ours(input_ids)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("case", MAMBA_CASES)
def test_mamba_logits_match_transformers(case, tmp_path):
    _check_logits("mamba", *MAMBA_CASES[case], tmp_path)


def _skip_if_gated_norm_ignores_groups(hf_config: dict) -> None:
    from transformers.models.mamba2 import modeling_mamba2

    # MambaRMSNormGated until transformers 5.x renamed it Mamba2RMSNormGated
    gated_norm = (
        getattr(modeling_mamba2, "Mamba2RMSNormGated", None) or modeling_mamba2.MambaRMSNormGated
    )
    grouped = "group_size" in inspect.signature(gated_norm).parameters
    if hf_config.get("n_groups", 8) > 1 and not grouped:
        pytest.skip(
            "this transformers release normalises Mamba-2's gated norm over all groups at once; "
            "mamba_ssm (and later transformers) normalise each group"
        )


@pytest.mark.parametrize("case", MAMBA2_CASES)
def test_mamba2_logits_match_transformers(case, tmp_path):
    _skip_if_gated_norm_ignores_groups(MAMBA2_CASES[case][0])
    _check_logits("mamba2", *MAMBA2_CASES[case], tmp_path)


@pytest.mark.parametrize(
    ("model_type", "hf_config"),
    [
        ("mamba", MAMBA_CASES["biases-untied-conv3"][0]),
        ("mamba2", MAMBA2_CASES["groups2-length-not-chunk-multiple"][0]),
    ],
)
def test_greedy_generate_matches_transformers(model_type, hf_config, tmp_path):
    if model_type == "mamba2":
        _skip_if_gated_norm_ignores_groups(hf_config)
    hf = random_hf_lm(model_type, seed=1, **hf_config)
    ours = mambaverse.load_pretrained(save(hf, tmp_path)).eval()
    prompt = torch.randint(0, hf.config.vocab_size, (2, 6))
    expected = hf.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(ours.generate(prompt, max_new_tokens=10), expected)


def test_imported_checkpoint_round_trips_through_save_pretrained(tmp_path):
    hf = random_hf_lm("mamba2", **MAMBA2_CASES["groups2-length-not-chunk-multiple"][0])
    ours = mambaverse.load_pretrained(save(hf, tmp_path / "hf")).eval()
    mambaverse.save_pretrained(ours, tmp_path / "ours")
    again = mambaverse.load_pretrained(tmp_path / "ours").eval()
    input_ids = torch.randint(0, hf.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(input_ids), ours(input_ids))


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_keys_left_out_of_config_json_mean_transformers_defaults(model_type, tmp_path):
    """A config.json that omits keys holding their class defaults (n_groups=8 for Mamba-2, say)
    is read as transformers reads it."""
    import json

    from transformers import Mamba2Config, MambaConfig

    from mambaverse.plugins.mamba_lm.convert import MAMBA2_DEFAULTS, MAMBA_DEFAULTS

    config_class, ours = {
        "mamba": (MambaConfig, MAMBA_DEFAULTS),
        "mamba2": (Mamba2Config, MAMBA2_DEFAULTS),
    }[model_type]
    defaults = config_class().to_dict()
    derived = {"time_step_rank"}  # "auto": transformers resolves it from hidden_size
    for key, value in ours.items():
        if key not in derived:
            expected = (
                [float(v) for v in defaults[key]] if key == "time_step_limit" else defaults[key]
            )
            got = [float(v) for v in value] if key == "time_step_limit" else value
            assert got == expected, key
    shape = (
        dict(hidden_size=32, num_hidden_layers=2, state_size=8)
        if model_type == "mamba"
        else dict(hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=8, head_dim=8)
    )
    hf = random_hf_lm(model_type, **shape, **({"n_groups": 8} if model_type == "mamba2" else {}))
    save(hf, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    kept = {k: v for k, v in written.items() if k == "model_type" or defaults.get(k, object()) != v}
    assert model_type == "mamba" or "n_groups" not in kept
    (tmp_path / "config.json").write_text(json.dumps(kept))
    ids = torch.randint(0, hf.config.vocab_size, (2, 7))
    with torch.no_grad():
        expected = hf(ids).logits
        actual = mambaverse.load_pretrained(tmp_path).eval()(ids)
    assert relative_error(actual, expected) < 1e-4


def test_weights_are_found_as_transformers_finds_them(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = random_hf_lm("mamba", hidden_size=32, num_hidden_layers=2, state_size=8)
    ids = torch.randint(0, hf.config.vocab_size, (1, 6))
    with torch.no_grad():
        expected = hf(ids).logits
    for layout, directory in (("one file", tmp_path / "one"), ("shards", tmp_path / "shards")):
        hf.save_pretrained(directory, max_shard_size="20KB" if layout == "shards" else "5GB")
        assert (directory / "model.safetensors.index.json").is_file() == (layout == "shards")
        # Another weight file beside them (a backup, an adapter) is never read.
        weights = {}
        for file in directory.glob("*.safetensors"):
            weights |= load_file(str(file))
        save_file(
            {k: torch.zeros_like(v) for k, v in weights.items()},
            str(directory / "backup.safetensors"),
        )
        with torch.no_grad():
            actual = mambaverse.load_pretrained(directory).eval()(ids)
        assert relative_error(actual, expected) < 1e-4, layout
    (tmp_path / "shards" / sorted((tmp_path / "shards").glob("model-*"))[0].name).unlink()
    with pytest.raises(mambaverse.ConfigError, match="names shards that are missing"):
        mambaverse.load_pretrained(tmp_path / "shards")


def test_an_import_names_missing_tensors_and_refuses_to_retie_them(tmp_path):
    import warnings

    from safetensors.torch import load_file, save_file

    hf = random_hf_lm(
        "mamba", hidden_size=32, num_hidden_layers=2, state_size=8, tie_word_embeddings=False
    )
    save(hf, tmp_path)
    with pytest.raises(mambaverse.ConfigError, match=r"tie_embeddings=True cannot be overridden"):
        mambaverse.load_pretrained(tmp_path, tie_embeddings=True)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["backbone.layers.1.norm.weight"]
    weights["backbone.extra.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(mambaverse.ConfigError) as err:
        mambaverse.load_pretrained(tmp_path)
    message = str(err.value)
    assert "missing layers.1.norm.weight; unexpected extra.weight" in message
    assert "strict=False" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mambaverse.load_pretrained(tmp_path, strict=False)
    assert any("missing layers.1.norm.weight" in str(w.message) for w in caught)
    assert torch.equal(model.layers[0].norm.weight, weights["backbone.layers.0.norm.weight"])


def test_an_imported_model_stops_where_transformers_generate_stops(tmp_path):
    hf = random_hf_lm("mamba", seed=2, hidden_size=32, num_hidden_layers=2, state_size=8)
    prompt = torch.randint(0, hf.config.vocab_size, (1, 5))
    free = hf.generate(prompt, max_new_tokens=12, do_sample=False)[0, 5:].tolist()
    stop = next(t for t in free[2:] if t not in free[:2])  # first emitted at step >= 2
    hf.generation_config.eos_token_id = stop
    hf.generation_config.pad_token_id = stop
    ours = mambaverse.load_pretrained(save(hf, tmp_path / "hf")).eval()
    expected = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    assert expected[0, -1] == stop and expected.shape[1] < 5 + 12
    assert torch.equal(ours.generate(prompt, max_new_tokens=12), expected)
    # Kept through a mambaverse checkpoint; [] asks for no end token.
    mambaverse.save_pretrained(ours, tmp_path / "ours")
    again = mambaverse.load_pretrained(tmp_path / "ours").eval()
    assert torch.equal(again.generate(prompt, max_new_tokens=12), expected)
    assert again.generate(prompt, max_new_tokens=12, eos_token_id=[]).shape[1] == 5 + 12


@pytest.mark.parametrize("source", ["hf", "mambaverse"])
def test_a_checkpoint_loads_in_the_dtype_asked_for(source, tmp_path):
    hf = random_hf_lm("mamba", hidden_size=32, num_hidden_layers=2, state_size=8)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf"
    if source == "mambaverse":
        mambaverse.save_pretrained(mambaverse.load_pretrained(path, dtype="auto"), tmp_path / "m")
        path = tmp_path / "m"
    assert {p.dtype for p in mambaverse.load_pretrained(path).parameters()} == {torch.float32}
    auto = mambaverse.load_pretrained(path, dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {torch.bfloat16}
    half = mambaverse.load_pretrained(path, dtype=torch.float16, device="cpu")
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    stored = hf.state_dict()["backbone.embeddings.weight"]
    assert torch.equal(auto.embedding.weight, stored)
    with pytest.raises(mambaverse.ConfigError, match="dtype='bf16'; give one of auto, float32"):
        mambaverse.load_pretrained(path, dtype="bf16")
    if source == "hf":  # "auto" takes config.json's dtype first, as transformers does
        import json

        config = json.loads((path / "config.json").read_text())
        config["dtype"] = "float16"
        (path / "config.json").write_text(json.dumps(config))
        auto = mambaverse.load_pretrained(path, dtype="auto")
        assert {p.dtype for p in auto.parameters()} == {torch.float16}


@pytest.mark.parametrize(
    ("model_type", "hf_config"),
    [
        ("mamba", MAMBA_CASES["biases-untied-conv3"][0]),
        ("mamba", MAMBA_CASES["default-shape"][0]),
        ("mamba2", MAMBA2_CASES["groups2-length-not-chunk-multiple"][0]),
        ("mamba2", MAMBA2_CASES["tied-biases-several-chunks"][0]),
    ],
)
def test_save_hf_writes_what_transformers_loads_and_inverts_the_import(
    model_type, hf_config, tmp_path
):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    if model_type == "mamba2":
        _skip_if_gated_norm_ignores_groups(hf_config)
    hf = random_hf_lm(model_type, seed=3, **hf_config)
    ours = mambaverse.load_pretrained(save(hf, tmp_path / "hf")).eval()
    mambaverse.save_hf(ours, tmp_path / "out")
    # The import's inverse: the same tensors under the same names.
    written, original = (
        load_file(str(d / "model.safetensors")) for d in (tmp_path / "out", tmp_path / "hf")
    )
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in written)
    # And transformers computes our logits from it.
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, hf.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert relative_error(again(ids).logits, ours(ids)) < 1e-5


def test_save_hf_of_a_fresh_model_and_of_one_it_cannot_export(tmp_path):
    from transformers import AutoModelForCausalLM

    model = mambaverse.create_model("mamba2_micro").eval()  # a vocabulary padded to 8
    mambaverse.save_hf(model, tmp_path / "m2")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m2").eval()
    ids = torch.randint(0, model.vocab_size, (1, 7))
    with torch.no_grad():
        assert relative_error(hf(ids).logits, model(ids)) < 1e-5
    with pytest.raises(mambaverse.ConfigError, match="mixer 'attention' has no transformers"):
        attention = mambaverse.create_model("mamba_micro", mixer="attention", mixer_config={})
        mambaverse.save_hf(attention, tmp_path / "a")
    with pytest.raises(
        mambaverse.ConfigError, match=r"backbone 'vim' .* backbones with one: mamba_lm"
    ):
        mambaverse.save_hf(mambaverse.create_model("vim_micro"), tmp_path / "v")


def test_a_single_weights_file_is_read_before_an_index(tmp_path):
    hf = random_hf_lm("mamba", hidden_size=32, num_hidden_layers=2, state_size=8)
    save(hf, tmp_path)
    # A stale index beside the file, naming a shard that is gone: transformers reads the file.
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"backbone.embeddings.weight": "model-00001-of-00002.safetensors"}}'
    )
    ids = torch.randint(0, hf.config.vocab_size, (1, 5))
    with torch.no_grad():
        actual = mambaverse.load_pretrained(tmp_path).eval()(ids)
        assert relative_error(actual, hf(ids).logits) < 1e-4
