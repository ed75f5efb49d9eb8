"""Third-party plugins through the `mambaverse` entry-point group: the example works; broken ones
are reported with their name and error while everything else keeps working; collisions are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mambaverse
from mambaverse import AmbiguousNameError, UnknownNameError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "third_party_plugin"
BROKEN = ROOT / "tests" / "fixtures" / "broken_plugins"


def pip_install(target: Path, *projects: Path) -> Path:
    """Install projects into ``target`` with pip (a site directory the tests put on sys.path)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *map(str, projects)],
        check=True,
    )  # fmt: skip
    return target


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    return pip_install(tmp_path_factory.mktemp("example_site"), EXAMPLE)


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    return pip_install(tmp_path_factory.mktemp("broken_site"), EXAMPLE, BROKEN)


def use_site(
    site: Path, monkeypatch, fresh_catalogue
) -> dict[str, mambaverse.manager.PluginRecord]:
    monkeypatch.syspath_prepend(str(site))
    mambaverse.manager.reset()
    return {record.name: record for record in mambaverse.list_plugins()}


def test_example_plugin_contributes_through_its_entry_point(
    example_site, monkeypatch, fresh_catalogue
):
    plugins = use_site(example_site, monkeypatch, fresh_catalogue)
    record = plugins["zigzag"]
    assert record.ok and record.source == "entry point of mambaverse-zigzag"
    assert record.contributed == {
        "scans": ["zigzag"],
        "backbones": ["convmixer"],
        "models": ["convmixer_micro"],
    }
    # registered after every built-in plugin
    assert list(plugins)[-1] == "zigzag"

    model = mambaverse.create_model("convmixer_micro", num_classes=10, img_size=16)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert "convmixer_micro" in mambaverse.list_models("conv*", task="vision")

    flatten, merge = mambaverse.get_scan("zigzag").load()
    grid = torch.arange(9.0).reshape(1, 3, 3, 1)
    assert flatten(grid).flatten().tolist() == [0, 1, 2, 5, 4, 3, 6, 7, 8]
    assert torch.equal(merge(flatten(grid), 3, 3), grid)


def test_broken_plugins_are_reported_and_skipped(broken_site, monkeypatch, fresh_catalogue):
    plugins = use_site(broken_site, monkeypatch, fresh_catalogue)
    errors = {
        name: plugins[name].error
        for name in ("broken_import", "broken_hook", "misnamed_hook", "wrong_return")
    }
    assert (
        "ModuleNotFoundError: No module named 'mambaverse_dependency_that_is_not_installed'"
        in errors["broken_import"]
    )
    assert "RuntimeError: this hook is broken on purpose" in errors["broken_hook"]
    assert (
        "unknown hook 'mambaverse_backbone' (did you mean 'mambaverse_backbones'?)"
        in errors["misnamed_hook"]
    )
    assert "mambaverse_scans() must return a list of ScanSpec" in errors["wrong_return"]
    assert all(not plugins[name].contributed for name in errors)
    # Everything else keeps working: built-in plugins, the registry, the healthy third-party ones.
    assert all(record.ok for name, record in plugins.items() if name not in errors)
    assert mambaverse.create_model("convmixer_micro", img_size=8)(
        torch.randn(1, 3, 8, 8)
    ).shape == (1, 1000)


def test_an_unknown_name_names_the_plugins_that_failed_to_load(
    broken_site, monkeypatch, fresh_catalogue
):
    use_site(broken_site, monkeypatch, fresh_catalogue)
    with pytest.raises(UnknownNameError) as err:
        mambaverse.create_model("broken_import:anything_tiny")
    message = str(err.value)
    assert "unknown model 'broken_import:anything_tiny'" in message
    assert "plugins that failed to load: " in message and "'broken_import'" in message
    assert "`mambaverse plugins` says why" in message


def test_name_collision_names_both_plugins_and_qualified_names_resolve(
    broken_site, monkeypatch, fresh_catalogue
):
    use_site(broken_site, monkeypatch, fresh_catalogue)
    with pytest.raises(AmbiguousNameError) as err:
        mambaverse.get_scan("zigzag")
    assert "scan 'zigzag' is contributed by plugins 'collider' and 'zigzag'" in str(err.value)
    assert "use one of 'collider:zigzag', 'zigzag:zigzag'" in str(err.value)
    assert mambaverse.get_scan("zigzag:zigzag").flatten == "mambaverse_zigzag.scan:flatten"
    assert mambaverse.get_scan("collider:zigzag").flatten == "mambaverse_broken.row_major:flatten"


def test_cli_plugins_shows_failures_and_exits_cleanly(broken_site):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(broken_site), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "mambaverse", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = {
        line.split("│")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.count("│") > 3
    }
    assert "FAILED: RuntimeError: this hook is broken on purpose" in lines["broken_hook"]
    assert "FAILED: ModuleNotFoundError" in lines["broken_import"]
    assert "scans: zigzag" in lines["collider"]
    # Both third-party plugins work, and each says which of its names the other shares.
    assert (
        "ok; shares names, reach its own as collider:<name>: scan 'zigzag' (also 'zigzag')"
        in (lines["collider"])
    )
    assert "reach its own as zigzag:<name>: scan 'zigzag' (also 'collider')" in lines["zigzag"]
