"""A third-party plugin that reuses a built-in name: built-in models and kernel defaults keep their
own; a bare name asked for directly is an error naming both plugins; `plugin:name` always works.
Hooks and names that could never be used are refused with the plugin's name."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse import AmbiguousNameError, ConfigError, KernelSpec, MixerSpec, ScanSpec, hookimpl
from mambaverse.manager import REGISTRY_PLUGIN, catalogue

pytestmark = pytest.mark.usefixtures("fresh_catalogue")


def shadow_scan(*args, **kwargs):
    raise AssertionError("a built-in model ran a third-party plugin's kernel")


def shadow_mixer(dim: int, **config):
    raise AssertionError("a built-in model built a third-party plugin's mixer")


class Shadowing:
    """Reuses the names of a kernel default, a mixer, a scan and a backbone of the built-ins."""

    @hookimpl
    def mambaverse_kernels(self):
        return [
            KernelSpec("selective_scan", "reference", shadow_scan, devices=("cpu",)),
            KernelSpec("selective_scan", "mine", shadow_scan, devices=("cpu",)),
        ]

    @hookimpl
    def mambaverse_mixers(self):
        return [MixerSpec("attention", shadow_mixer), MixerSpec("mamba", shadow_mixer)]

    @hookimpl
    def mambaverse_scans(self):
        return [ScanSpec("bidirectional", "x:flatten", "x:merge", num_sequences=2)]


def test_built_in_models_keep_their_names():
    assert mambaverse.register_plugin(Shadowing(), "shadow").ok
    lm = mambaverse.create_model("jamba_micro")  # attention and mamba layers
    ids = torch.randint(0, lm.vocab_size, (1, 6))
    assert lm(ids).shape[:2] == (1, 6)
    vim = mambaverse.create_model("vim_micro", img_size=16, num_classes=3)  # bidirectional, mamba
    assert vim(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    assert mambaverse.list_models("vim_micro", task="vision") == ["vim_micro"]


def test_the_default_kernel_stays_the_registry_s():
    mambaverse.register_plugin(Shadowing(), "shadow")
    choice = mambaverse.choose_kernel("selective_scan", device="cpu", dtype=torch.float32)
    registry_spec = dict(catalogue().entries["kernels"]["selective_scan/reference"])[
        REGISTRY_PLUGIN
    ]
    assert choice.spec is registry_spec and choice.reason == "registry default for cpu"
    rows = [r for r in mambaverse.list_kernels("cpu") if r["op"] == "selective_scan"]
    assert [r["impl"] for r in rows if r["chosen"]] == ["registry.yaml:reference"]


def test_a_shared_bare_name_asked_for_directly_names_both_plugins():
    mambaverse.register_plugin(Shadowing(), "shadow")
    with pytest.raises(AmbiguousNameError, match="'mixers' and 'shadow'; use one of"):
        mambaverse.get_mixer("attention")
    with pytest.raises(AmbiguousNameError) as err:
        mambaverse.get_kernel("selective_scan", impl="reference", device="cpu")
    assert "is contributed by plugins 'registry.yaml' and 'shadow'" in str(err.value)
    assert "'shadow:reference'" in str(err.value)


def test_qualified_names_always_work():
    mambaverse.register_plugin(Shadowing(), "shadow")
    pick = mambaverse.get_kernel
    assert pick("selective_scan", impl="shadow:reference", device="cpu") is shadow_scan
    assert pick("selective_scan", impl="shadow:mine", device="cpu") is shadow_scan  # not shared
    assert pick("selective_scan", impl="mine", device="cpu") is shadow_scan
    registry = pick("selective_scan", impl="registry.yaml:reference", device="cpu")
    assert registry is not shadow_scan and registry.__module__.endswith("selective_scan.reference")
    assert mambaverse.get_mixer("shadow:attention").factory is shadow_mixer
    # A model told to use the plugin's mixer gets it.
    with pytest.raises(AssertionError, match="third-party plugin's mixer"):
        mambaverse.create_model("mamba_micro", mixer="shadow:mamba")


def test_the_plugin_listing_names_what_is_shared():
    mambaverse.register_plugin(Shadowing(), "shadow")
    clashes = catalogue().clashes("shadow")
    assert "kernel 'selective_scan/reference' (also 'registry.yaml')" in clashes
    assert "mixer 'attention' (also 'mixers')" in clashes
    assert "scan 'bidirectional' (also 'scans')" in clashes
    assert not any("mine" in clash for clash in clashes)


class Marked:
    @hookimpl
    def scans(self):  # a @hookimpl whose name is no hook
        return []


class Unmarked:
    def mambaverse_scans(self):  # a hook without @hookimpl: pluggy would never call it
        return [ScanSpec("never", "x:flatten", "x:merge")]


class OwnPackageName:
    """A plugin module that imported its own package, `mambaverse_mynet`, and a helper."""

    mambaverse_mynet = object()

    @staticmethod
    def mambaverse_helper_table():
        return {}

    @hookimpl
    def mambaverse_scans(self):
        return [ScanSpec("mynet_scan", "x:flatten", "x:merge")]


def test_hooks_are_recognised_by_their_marker_not_their_prefix():
    marked = mambaverse.register_plugin(Marked(), "marked")
    assert "unknown hook 'scans' (did you mean 'mambaverse_scans'?)" in marked.error
    unmarked = mambaverse.register_plugin(Unmarked(), "unmarked")
    assert "mambaverse_scans is not marked @mambaverse.hookimpl" in unmarked.error
    own = mambaverse.register_plugin(OwnPackageName(), "mynet")
    assert own.ok and own.contributed == {"scans": ["mynet_scan"]}


class Contributes:
    """A plugin contributing the scans and kernels it is given."""

    def __init__(self, *specs):
        self.specs = specs

    @hookimpl
    def mambaverse_scans(self):
        return [spec for spec in self.specs if isinstance(spec, ScanSpec)]

    @hookimpl
    def mambaverse_kernels(self):
        return [spec for spec in self.specs if isinstance(spec, KernelSpec)]


def test_names_that_could_not_be_looked_up_are_refused():
    record = mambaverse.register_plugin(Contributes(ScanSpec("a:b", "x:f", "x:m")), "unusable")
    assert "scan name 'a:b' cannot be looked up (no ':'" in record.error
    assert mambaverse.get_scan("causal")  # the rest keeps working
    for n, impl in enumerate(("x=y", "with space", "a,b", "op/impl")):
        spec = KernelSpec("attention", impl, open_attention)
        record = mambaverse.register_plugin(Contributes(spec), f"unusable_{n}")
        assert f"kernel name {impl!r} cannot be looked up (no ':', '/', '='" in record.error


class Slashed:
    @hookimpl(specname="mambaverse_scans")  # a hook named by specname, as pluggy allows
    def my_scans(self):
        return [ScanSpec("state-spaces/zigzag+v2", "x:f", "x:m")]  # '/' and '+' are fine here


def test_specname_hooks_and_names_with_slashes_work():
    record = mambaverse.register_plugin(Slashed(), "slashed")
    assert record.ok, record.error
    assert mambaverse.get_scan("slashed:state-spaces/zigzag+v2").name == "state-spaces/zigzag+v2"


def test_a_name_contributed_twice_by_one_plugin_is_refused():
    twice = ScanSpec("twice", "x:f", "x:m")
    record = mambaverse.register_plugin(Contributes(twice, twice), "twice")
    assert "scan 'twice' is contributed twice" in record.error


def test_an_op_chosen_twice_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "selective_scan=reference, selective_scan=triton")
    with pytest.raises(ConfigError, match="'selective_scan' is chosen twice"):
        mambaverse.choose_kernel("selective_scan", device="cpu")
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "selective_scan=reference,selective_scan=reference")
    assert mambaverse.choose_kernel("selective_scan", device="cpu").impl == "reference"


def test_the_choice_follows_triton_interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pick = mambaverse.choose_kernel
    assert pick("selective_scan", impl="triton", device="cpu", dtype=torch.float32).impl == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(mambaverse.KernelUnavailableError, match="runs on cuda, not on cpu"):
        pick("selective_scan", impl="triton", device="cpu", dtype=torch.float32)


def test_a_built_in_plugin_that_fails_leaves_the_listings_working(monkeypatch, capsys):
    import mambaverse.plugins as builtin

    found = builtin.builtin_plugins()
    monkeypatch.setattr(
        builtin, "builtin_plugins", lambda: {**found, "cobra": "mambaverse_missing_module"}
    )
    mambaverse.manager.reset()
    assert "cobra_3b" in mambaverse.list_models("cobra*")  # registry.yaml's preset, unusable
    assert mambaverse.list_models("cobra*", task="vlm") == []
    assert "vim_micro" in mambaverse.list_models(task="vision")

    from mambaverse.cli import main

    assert main(["list", "cobra*"]) == 0
    out = capsys.readouterr().out
    assert "cobra_3b" in out and "unusable: model 'cobra_3b' (from registry.yaml)" in out


def narrow_attention(q, k, v):  # the op also passes causal and scale
    return q


def open_attention(q, k, v, **options):
    return q


def renamed_cross_entropy(x, y, ignore=-100):  # other names: the op passes these by position
    return x


def test_a_plugin_kernel_that_cannot_take_the_op_s_arguments_is_named(monkeypatch):
    mambaverse.register_plugin(
        Contributes(
            KernelSpec("attention", "narrow", narrow_attention, devices=("cpu",)),
            KernelSpec("attention", "open", open_attention, devices=("cpu",)),
            KernelSpec("cross_entropy", "renamed", renamed_cross_entropy, devices=("cpu",)),
        ),
        "kernels_plugin",
    )
    with pytest.raises(mambaverse.KernelUnavailableError) as err:
        mambaverse.get_kernel("attention", impl="narrow", device="cpu")
    assert str(err.value).startswith(
        "kernel attention/narrow of plugin 'kernels_plugin' cannot take the op's arguments "
        "attention(q, k, v, causal, scale), by position or by name (it takes (q, k, v))"
    )
    assert "MAMBAVERSE_KERNELS='attention=reference'" in str(err.value)
    assert mambaverse.get_kernel("attention", impl="open", device="cpu") is open_attention
    q = torch.randn(1, 2, 3, 4)
    assert mambaverse.kernels.attention(q, q, q, impl="open") is q  # the op calls it as it is
    pick = mambaverse.get_kernel("cross_entropy", impl="renamed", device="cpu")
    assert pick is renamed_cross_entropy

    # `mambaverse kernels` marks it as a call would find it; and when it is the choice, says so.
    rows = {(r["op"], r["impl"]): r for r in mambaverse.list_kernels("cpu")}
    assert "cannot take the op's arguments" in rows["attention", "narrow"]["unavailable"]
    assert rows["attention", "open"]["unavailable"] is None
    monkeypatch.setenv("MAMBAVERSE_KERNELS", "attention=narrow")
    rows = [r for r in mambaverse.list_kernels("cpu") if r["op"] == "attention"]
    assert not any(r["chosen"] for r in rows)
    assert all(
        r["reason"].startswith("none can be used: kernel attention/narrow of plugin") for r in rows
    )


def test_a_kernel_spec_given_lists_can_be_called():
    listed = KernelSpec("attention", "listed", open_attention, devices=["cpu"], dtypes=[])
    mambaverse.register_plugin(Contributes(listed), "list_spec")
    assert mambaverse.get_kernel("attention", impl="listed", device="cpu") is open_attention
