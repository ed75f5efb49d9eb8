"""Packaging: a light import, and a wheel that works in a fresh virtual environment."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_is_light():
    code = (
        "import sys, json, mambaverse; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton') "
        "or m.startswith('mambaverse.plugins.') or m.startswith('mambaverse.kernels.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_wheel_installs_into_a_fresh_venv_and_finds_its_registry(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("mambaverse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mambaverse/registry.yaml" in names
    assert not any(name.split("/")[0] in ("core", "plugins", "kernels") for name in names)
    shipped = zipfile.ZipFile(wheel).read("mambaverse/registry.yaml").decode()
    assert shipped == (ROOT / "registry.yaml").read_text()

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--disable-pip-version-check", str(wheel)],
        check=True,
    )  # fmt: skip
    where = subprocess.run(
        [str(python), "-c", "import mambaverse.registry as r; print(r.default_path())"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(env_dir)), where  # the wheel's copy, not this checkout
    mambaverse = env_dir / "bin" / "mambaverse"
    listed = subprocess.run(
        [str(mambaverse), "list", "mamba*"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "mamba_130m" in listed.stdout and "registry.yaml" in listed.stdout
    kernels = subprocess.run(
        [str(mambaverse), "kernels", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert kernels.returncode == 0, kernels.stderr
    assert "selective_scan" in kernels.stdout and "reference" in kernels.stdout
