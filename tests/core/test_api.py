"""Public API: building by name, nearest-name and valid-key errors, dispatch precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from annotated_types import Interval

import mambaverse
from mambaverse import ConfigError, KernelUnavailableError, UnknownNameError
from mambaverse.bounds import Positive

from .toy_plugin import ToyPlugin


@pytest.fixture
def toy(fresh_catalogue):
    record = mambaverse.register_plugin(ToyPlugin(), "toy")
    assert record.ok, record.error
    return record


def test_create_model_applies_preset_then_overrides(toy):
    model = mambaverse.create_model("toynet_small", depth=5)
    assert (model.width, model.depth) == (4, 5)
    assert model.mambaverse_config == {
        "backbone": "toy:toynet",
        "model": "toynet_small",
        "config": {"width": 4, "depth": 5},
    }


def test_qualified_name_always_resolves(toy):
    assert mambaverse.create_model("toy:toynet_large").width == 64


def test_a_second_plugin_of_the_same_name_gets_its_own_failed_record(toy):
    second = mambaverse.register_plugin(ToyPlugin(), "toy")
    assert second is not toy and not second.ok
    assert "a plugin named 'toy' is already registered" in second.error
    assert toy.ok  # the first keeps its contributions
    assert mambaverse.create_model("toynet_small").width == 4


def test_unknown_model_lists_nearest_names(toy):
    with pytest.raises(UnknownNameError) as err:
        mambaverse.create_model("toynet_smal")
    assert "unknown model 'toynet_smal'" in str(err.value)
    assert "'toynet_small'" in str(err.value)


def test_unknown_kernel_implementation_lists_the_few_there_are(monkeypatch):
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "selective_scan=cuda_fast")
    with pytest.raises(UnknownNameError) as err:
        mambaverse.choose_kernel("selective_scan", device="cpu")
    message = str(err.value)
    assert "unknown implementation of 'selective_scan' (MAMBAVERSE_KERNELS) 'cuda_fast'" in message
    assert "known: 'reference', 'triton'" in message


def test_pretrained_is_accepted_as_timm_and_open_clip_callers_pass_it(toy):
    assert mambaverse.create_model("toynet_small", pretrained=False).width == 4
    with pytest.raises(ConfigError, match=r"downloads no weights.*load_pretrained\(directory\)"):
        mambaverse.create_model("toynet_small", pretrained=True)


@pytest.mark.parametrize(
    ("kernels", "message"),
    [
        ("triton", r"expected a mapping of kernel op to implementation.*got 'triton'"),
        ({"selective_scan": "cuda_fast"}, r"'cuda_fast': known: 'reference', 'triton'"),
        ({"selectve_scan": "reference"}, r"unknown kernel op .*'selectve_scan'.*'selective_scan'"),
    ],
)
def test_a_bad_kernels_config_is_refused_when_the_model_is_built(kernels, message):
    with pytest.raises(
        UnknownNameError if isinstance(kernels, dict) else ConfigError, match=message
    ):
        mambaverse.create_model("mamba_micro", kernels=kernels)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"depth": "four"}, r"depth='four' \(str\) does not fit its type, int"),
        ({"depth": True}, r"depth=True \(bool\) does not fit its type, int"),
        ({"expand": "2"}, r"expand='2' \(str\) does not fit its type, float"),
        ({"scan": 3}, r"scan=3 \(int\) does not fit its type, str"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_when_the_model_is_built(override, message):
    with pytest.raises(ConfigError, match=r"config of 'vim_micro': " + message):
        mambaverse.create_model("vim_micro", **override)
    # ints are floats too (numpy's count), an Optional takes None
    assert mambaverse.create_model("vim_micro", expand=2, scan_options=None) is not None
    model = mambaverse.create_model("vim_micro", depth=np.int64(2), expand=np.float32(1.5))
    assert model.mambaverse_config["config"]["depth"] == 2


def test_a_default_value_always_fits_its_own_hint():
    def builder(width: int = None, name: str = "a"):  # noqa: RUF013 (as a third party may)
        return width, name

    hints = mambaverse.api._hints(builder)
    mambaverse.api.check_types("toy", builder, {"width": None, "name": Path("x")}, hints)
    with pytest.raises(ConfigError, match=r"width=1.5 \(float\) does not fit its type, int"):
        mambaverse.api.check_types("toy", builder, {"width": 1.5}, hints)


@pytest.mark.parametrize(
    ("name", "override", "message"),
    [
        (
            "vim_micro",
            {"depth": -1},
            r"config of 'vim_micro': depth=-1 is out of range: it must be >= 1",
        ),
        ("vim_micro", {"embed_dim": 0}, r"embed_dim=0 is out of range: it must be >= 1"),
        ("vim_micro", {"img_size": 0}, r"img_size=0 is out of range"),
        (
            "vim_micro",
            {"drop_path_rate": 1.0},
            r"drop_path_rate=1.0 is out of range: it must be < 1",
        ),
        ("vim_micro", {"expand": 0.0}, r"expand=0.0 is out of range: it must be > 0"),
        ("vim_micro", {"mixer_config": {"d_state": -3}}, r"mixer 'mamba' on a grid: d_state=-3"),
        ("vmamba_micro", {"mlp_ratio": -1.0}, r"mlp_ratio=-1.0 is out of range: it must be >= 0"),
        ("mamba_micro", {"n_layer": 0}, r"n_layer=0 is out of range: it must be >= 1"),
        ("mamba2_micro", {"mixer_config": {"headdim": 0}}, r"mixer 'mamba2' config: headdim=0"),
    ],
)
def test_a_value_out_of_its_range_is_refused_before_the_model_is_built(name, override, message):
    with pytest.raises(ConfigError, match=message):
        mambaverse.create_model(name, **override)


def test_values_at_the_edges_of_their_ranges_build():
    vim = mambaverse.create_model("vim_micro", num_classes=0, img_size=(32, 48), drop_rate=0.0)
    assert vim(torch.randn(1, 3, 32, 48)).shape[-1] == vim.num_features  # features, no head
    assert mambaverse.create_model("vmamba_micro", mlp_ratio=0.0) is not None  # no MLP


def test_a_third_party_builder_declares_its_own_bounds():
    def builder(ratio: Annotated[float, Interval(gt=0, le=4)] = 1.0, width: Positive | None = None):
        return ratio, width

    mambaverse.api.check_config("toy", builder, {"ratio": 4, "width": None})
    with pytest.raises(ConfigError, match=r"toy: ratio=4.5 is out of range: it must be <= 4"):
        mambaverse.api.check_config("toy", builder, {"ratio": 4.5})
    with pytest.raises(ConfigError, match=r"toy: width=0 is out of range: it must be >= 1"):
        mambaverse.api.check_config("toy", builder, {"width": 0})
    with pytest.raises(ConfigError, match=r"width='2' \(str\) does not fit its type, int \| None"):
        mambaverse.api.check_config("toy", builder, {"width": "2"})


def test_count_parameters_of_a_preset_or_a_built_model():
    model = mambaverse.create_model("vim_micro")
    assert mambaverse.count_parameters(model) == mambaverse.count_parameters("vim_micro") > 0
    with pytest.raises(ConfigError, match="apply to a preset name, not to a built model"):
        mambaverse.count_parameters(model, depth=2)


def test_an_unknown_task_lists_the_tasks(toy):
    with pytest.raises(
        UnknownNameError, match="unknown task 'audio': known: 'lm', 'vision', 'vlm'"
    ):
        mambaverse.list_models(task="audio")


def test_unknown_override_lists_valid_keys(toy):
    with pytest.raises(ConfigError) as err:
        mambaverse.create_model("toynet_small", widht=3)
    message = str(err.value)
    assert "'widht'" in message and "did you mean 'width'" in message
    assert "valid keys: depth, num_classes, width" in message


def test_list_models_by_pattern_and_task(toy):
    assert mambaverse.list_models("toynet_*") == ["toynet_large", "toynet_small"]
    assert mambaverse.list_models("toynet_*", task="lm") == []
    assert mambaverse.list_models("toynet_*", task="vision") == ["toynet_large", "toynet_small"]


def test_model_info_reports_plugin_and_full_config(toy):
    info = mambaverse.model_info("toynet_small", count_params=False)
    assert (
        info["backbone"] == "toynet" and info["preset_from"] == "toy" and info["task"] == "vision"
    )
    assert info["config"] == {"width": 4, "depth": 2, "num_classes": 10}


def test_mixer_by_name_and_its_keys(toy):
    assert mambaverse.create_mixer("toy_mixer", 16, expand=4) == ("toy_mixer", 16, 4)
    assert "toy_mixer" in mambaverse.list_mixers(kind="channel")
    assert "toy_mixer" not in mambaverse.list_mixers(kind="token")
    with pytest.raises(ConfigError, match="valid keys: expand"):
        mambaverse.create_mixer("toy_mixer", 16, expnad=4)
    with pytest.raises(UnknownNameError, match="did you mean 'toy_mixer'"):
        mambaverse.get_mixer("toy_mixr")


class TestDispatch:
    def call(self, impl=None, dtype="float32"):
        fn = mambaverse.get_kernel("toy_add", impl=impl, device="cpu", dtype=dtype)
        return fn(1, 2)[0]

    def test_default_is_first_that_can_run(self, toy):
        assert self.call() == "fast"  # no registry.yaml entry: registration order
        assert self.call(dtype="float64") == "slow"  # "fast" takes float32 only: skipped

    def test_impl_argument_beats_environment_beats_model_config(self, toy, monkeypatch):
        with mambaverse.kernel_choices({"toy_add": "slow"}):
            assert self.call() == "slow"
            monkeypatch.setenv("MAMBAVERSE_KERNELS", "toy_add=fast")
            assert self.call() == "fast"
            assert self.call(impl="slow") == "slow"
        choice = mambaverse.choose_kernel("toy_add", device="cpu", dtype="float32")
        assert choice.impl == "fast" and choice.reason == "MAMBAVERSE_KERNELS"

    def test_explicit_choice_never_falls_back(self, toy):
        with pytest.raises(KernelUnavailableError, match="supports float32, not float64"):
            self.call(impl="fast", dtype="float64")
        with pytest.raises(KernelUnavailableError, match="runs on cuda, not on cpu"):
            self.call(impl="gpu")

    def test_no_implementation_for_the_device_says_why_for_each(self, toy):
        with pytest.raises(KernelUnavailableError) as err:
            mambaverse.get_kernel("toy_add", device="mps", dtype="float32")
        assert "no implementation of 'toy_add' can run" in str(err.value)
        assert "fast: runs on cpu, not on mps" in str(err.value)

    def test_unknown_names_and_bad_environment(self, toy, monkeypatch):
        with pytest.raises(UnknownNameError, match="did you mean 'fast'"):
            self.call(impl="fats")
        with pytest.raises(UnknownNameError, match="unknown kernel op 'toy_ad'"):
            mambaverse.get_kernel("toy_ad")
        monkeypatch.setenv("MAMBAVERSE_KERNELS", "toy_add")
        with pytest.raises(ConfigError, match="not 'op=impl'"):
            self.call()

    def test_a_choice_for_an_unknown_op_is_refused_not_ignored(self, toy, monkeypatch):
        monkeypatch.setenv("MAMBAVERSE_KERNELS", "toy_ad=slow")
        with pytest.raises(
            UnknownNameError, match="MAMBAVERSE_KERNELS: unknown kernel op 'toy_ad': did you mean"
        ):
            self.call()
        monkeypatch.delenv("MAMBAVERSE_KERNELS")
        with (
            mambaverse.kernel_choices({"toy_ad": "slow"}),
            pytest.raises(
                UnknownNameError, match="model config's kernels: unknown kernel op 'toy_ad'"
            ),
        ):
            self.call()

    def test_list_kernels_says_why_no_implementation_is_used(self, toy, monkeypatch):
        monkeypatch.setenv("MAMBAVERSE_KERNELS", "toy_add=gpu")
        rows = [row for row in mambaverse.list_kernels("cpu") if row["op"] == "toy_add"]
        assert rows and not any(row["chosen"] for row in rows)
        for row in rows:  # each row of the op carries the error a call would raise
            assert row["reason"].startswith("none can be used: toy_add=gpu (chosen by")
            assert "runs on cuda, not on cpu" in row["reason"]
        with pytest.raises(UnknownNameError, match="device type 'cdua': did you mean 'cuda'"):
            mambaverse.list_kernels("cdua")


def test_a_plugin_mixer_may_name_its_width_as_it_likes(fresh_catalogue):
    class Widen(torch.nn.Module):
        def __init__(self, d_model: Positive, expand: Positive = 2) -> None:
            super().__init__()
            self.width = d_model * expand

    mambaverse.register_plugin(
        type("WidthPlugin", (), {"mambaverse_mixers": mambaverse.hookimpl(
            lambda self: [mambaverse.MixerSpec("widen", Widen)])})(),
        "width_plugin",
    )  # fmt: skip
    assert mambaverse.create_mixer("widen", 8, expand=3).width == 24
    with pytest.raises(ConfigError, match=r"mixer 'widen' config: d_model=0 is out of range"):
        mambaverse.create_mixer("widen", 0)
