"""The training config: dotted overrides, one-line errors that name the key and the way out, and
the default job written out in examples/configs/digits.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import mambaverse
from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.train.config import TrainConfig, apply_override, load_config, parse_value
from mambaverse.train.data import build_dataset
from mambaverse.train.data.images import DigitsOptions
from mambaverse.train.data.tokens import TokenFileOptions

from .conftest import ROOT


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 1e-3), ("-2.5E+2", -250.0), ("3", 3), ("0.5", 0.5), ("true", True),
     ("bf16", "bf16"), ("[a.*, b]", ["a.*", "b"]), ("null", None), ("{x: 1}", {"x": 1})],
)  # fmt: skip
def test_command_line_values_are_yaml_with_exponent_numbers(text, value):
    assert parse_value(text) == value


def test_no_and_yes_are_words_as_in_yaml_1_2(tmp_path):
    # YAML 1.1 reads them as booleans: `precision: no` was the boolean false, and refused.
    assert parse_value("no") == "no" and parse_value("on") == "on" and parse_value("False") is False
    assert load_config(None, ["precision=no"]).precision == "no"
    config_file = tmp_path / "run.yaml"
    config_file.write_text("precision: no\n")
    assert load_config(config_file).precision == "no"


def test_config_files_read_exponent_numbers_as_numbers(tmp_path):
    config_file = tmp_path / "run.yaml"
    # (The model section's values reach the builder as they are read: no schema coerces them.)
    config_file.write_text("model:\n  name: vim_micro\n  drop_path_rate: 1e-2\n  expand: 2E+0\n")
    assert load_config(config_file).model.overrides() == {"drop_path_rate": 1e-2, "expand": 2.0}


def test_dotted_overrides_build_nested_sections():
    config: dict = {"optim": {"lr": 0.1}}
    apply_override(config, "optim.lr=2e-4")
    apply_override(config, "model.depth=3")
    apply_override(config, "freeze=[patch_embed.*]")
    assert config == {"optim": {"lr": 2e-4}, "model": {"depth": 3}, "freeze": ["patch_embed.*"]}
    with pytest.raises(ConfigError, match=r"optim\.lr is a value, not a section"):
        apply_override(config, "optim.lr.x=1")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override(config, "optim.lr")
    with pytest.raises(ConfigError) as err:  # YAML reads *.bias as an alias
        apply_override(config, "freeze=[*.bias]")
    assert "quote an item that starts with '*' or '&', e.g. ['*.bias']" in str(err.value)
    apply_override(config, "freeze=['*.bias']")
    assert config["freeze"] == ["*.bias"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_it_and_the_valid_keys(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("optim:\n  lr: 0.001\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file)
    message = one_line(err)
    assert message.startswith(f"{config_file}: optim: unknown key 'weight_decy'")
    assert "did you mean 'weight_decay'" in message
    assert "valid keys: betas, clip_grad_norm, eps, lr, weight_decay" in message

    with pytest.raises(ConfigError) as err:
        load_config(None, ["epochz=3"])
    assert "unknown key 'epochz' (did you mean 'epochs'?)" in one_line(err)
    with pytest.raises(ConfigError) as err:  # a section's key given at the top level
        load_config(None, ["every_steps=3"])
    assert one_line(err).endswith(
        "every_steps is a key of a section: eval.every_steps or checkpoint.every_steps"
    )
    with pytest.raises(ConfigError, match=r"'optim.lr' does not exist; to set a key, write optim"):
        load_config("optim.lr")


def test_bad_values_name_the_key_path_and_the_choices():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["precision=fp8"])
    message = one_line(err)
    assert message.startswith("defaults + overrides: precision:")
    assert "'no', 'fp16' or 'bf16'" in message and "(got 'fp8')" in message
    with pytest.raises(ConfigError, match=r"optim\.lr: Input should be greater than 0"):
        load_config(None, ["optim.lr=-1"])


def test_data_options_are_checked_against_the_dataset_schema():
    with pytest.raises(ConfigError) as err:
        build_dataset(load_config(None, ["data.seq_len=64"]).data, "vision", "run.yaml")
    assert one_line(err) == (
        "run.yaml: data: unknown key 'seq_len'; "
        "valid keys: channels, img_size, name, split_seed, test_fraction"
    )
    with pytest.raises(
        UnknownNameError, match=r"run.yaml: data.name: unknown dataset 'digit'.*'digits'"
    ):
        build_dataset(load_config(None, ["data.name=digit"]).data, "vision", "run.yaml")
    with pytest.raises(ConfigError, match="is for lm models, but the model is a vision model"):
        build_dataset(load_config(None, ["data.name=tokens"]).data, "vision", "run.yaml")


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_digits_example_is_the_default_job():
    """`mambaverse train` with no file runs the schema's defaults; the example spells them out."""
    example = TrainConfig.model_validate(
        yaml.safe_load((ROOT / "examples" / "configs" / "digits.yaml").read_text())
    )
    default = TrainConfig()
    assert example.model_dump(exclude={"data"}) == default.model_dump(exclude={"data"})
    # The data section's defaults are the dataset's own.
    assert DigitsOptions(**example.data.model_dump()) == DigitsOptions(name=default.data.name)


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name for p in (ROOT / "examples" / "configs").glob("*.yaml") if "accelerate" not in p.name
    ),
)
def test_every_example_training_config_is_valid(name):
    load_config(Path(ROOT / "examples" / "configs" / name))


def test_a_model_s_boolean_parameter_takes_yes_and_no(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("model:\n  name: mamba_micro\n  tie_embeddings: no\n")
    overrides = load_config(config_file).model.overrides()
    assert overrides == {"tie_embeddings": "no"}  # a word until the builder's hint says bool
    model = mambaverse.create_model("mamba_micro", **overrides)
    assert model.mambaverse_config["config"]["tie_embeddings"] is False
    assert model.lm_head.weight is not model.embedding.weight


def test_a_number_given_for_a_name_or_a_path_is_that_name():
    config = load_config(None, ["output_dir=2024", "data.name=tokens", "data.path=2024"])
    assert config.output_dir == "2024"
    assert TokenFileOptions(name="tokens", **config.data.options()).path == "2024"
