"""Fixtures for the training tests: the toy plugin (in this process and in subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mambaverse import manager

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory) -> Path:
    """A site directory whose only content is the entry point of tests/train/toy_plugin.py."""
    site = tmp_path_factory.mktemp("toy_site")
    info = site / "mambaverse_train_toys-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mambaverse-train-toys\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text("[mambaverse]\ntrain_toys = tests.train.toy_plugin\n")
    return site


@pytest.fixture
def toys(toy_site, monkeypatch):
    """Make the toy models available here and in subprocesses (through PYTHONPATH)."""
    monkeypatch.syspath_prepend(str(toy_site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(toy_site), str(ROOT)]))
    for name in ("TOY_RECORD_DIR", "TOY_SIGNAL_AT", "TOY_SIGNAL", "TOY_STEP_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    manager.reset()
    yield
    manager.reset()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """``python -m mambaverse <args>`` in a subprocess, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "mambaverse", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
