"""The command line: tables on success, one-line errors and a non-zero exit on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mambaverse
from mambaverse.cli import main

from .toy_plugin import ToyPlugin


@pytest.fixture
def toy(fresh_catalogue):
    mambaverse.register_plugin(ToyPlugin(), "toy")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mambaverse {mambaverse.__version__}"


def test_list_filters_by_pattern_and_task(toy, capsys):
    assert main(["list", "toynet_*", "--task", "vision"]) == 0
    out = capsys.readouterr().out
    assert "toynet_small" in out and "toynet_large" in out
    assert main(["list", "toynet_*", "--task", "lm"]) == 1
    assert "no model matches" in capsys.readouterr().out


def test_info_shows_the_full_config(toy, capsys):
    assert main(["info", "toynet_large", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"width": 64' in out and '"depth": 2' in out and '"parameters": 0' in out


def test_unknown_name_is_one_line_with_nearest_names(toy, capsys):
    assert main(["info", "toynet_smal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "mambaverse info: error: unknown model 'toynet_smal': did you mean 'toynet_small'"
    )


def test_kernels_table_marks_the_choice_and_why(toy, capsys):
    assert main(["kernels", "--device", "cpu"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "toy_add" in line]
    chosen = [row for row in rows if "│ *" in row]
    assert len(rows) == 3 and len(chosen) == 1 and "fast" in chosen[0]
    assert any("gpu" in row and "no: runs on cuda, not on cpu" in row for row in rows)


def test_kernels_table_for_a_numbered_device_reads_its_type(toy):
    rows = {r["impl"]: r for r in mambaverse.list_kernels("cuda:0") if r["op"] == "toy_add"}
    assert "not on cuda:0" not in (rows["gpu"]["unavailable"] or "")  # runs on cuda, so cuda:0
    assert rows["slow"]["unavailable"].startswith("runs on cpu, not on cuda")


def test_python_dash_m_and_usage_errors():
    result = subprocess.run(
        [sys.executable, "-m", "mambaverse", "info"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "the following arguments are required: name" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mambaverse", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("list", "info", "plugins", "kernels"):
        assert command in result.stdout
