"""registry.yaml validation: every error names the offending key path and the way out."""

from __future__ import annotations

import textwrap

import pytest

from mambaverse import ConfigError, registry

GOOD_OP = """
kernels:
  attention:
    implementations:
      reference: {target: "mambaverse.api:list_kernels", devices: [cpu, cuda]}
    default: {cpu: [reference]}
"""


def write(tmp_path, text):
    path = tmp_path / "registry.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_registry_is_valid():
    loaded = registry.load(registry.default_path())
    assert loaded.version == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "modles: {}\n",
            "(top level): unknown key 'modles' (did you mean 'models'?); valid keys: kernels, models, version",
        ),
        (
            "models:\n  tiny: {backbone: vim, confg: {}}\n",
            "models.tiny: unknown key 'confg' (did you mean 'config'?); valid keys: backbone, config, description, published",
        ),
        (
            GOOD_OP.replace("devices: [cpu, cuda]", "devcies: [cpu]"),
            "kernels.attention.implementations.reference: unknown key 'devcies' (did you mean 'devices'?)",
        ),
        ("models:\n  tiny: {config: {}}\n", "models.tiny.backbone: required key is missing"),
        (
            GOOD_OP.replace("devices: [cpu, cuda]", "devices: cpu"),
            "kernels.attention.implementations.reference.devices: Input should be a valid list",
        ),
        (
            GOOD_OP.replace("mambaverse.api", "os.path"),
            "kernels.attention.implementations.reference.target: 'os.path:list_kernels' is outside the mambaverse package",
        ),
        (
            GOOD_OP.replace("mambaverse.api:", "mambaverse.kernels.nowhere:"),
            "kernels.attention.implementations.reference.target: module 'mambaverse.kernels.nowhere' does not exist",
        ),
        (
            GOOD_OP.replace("cpu: [reference]", "cpu: [refrence]"),
            "kernels.attention.default.cpu: unknown implementation 'refrence'; this op has: reference",
        ),
        (
            GOOD_OP.replace("devices: [cpu, cuda]", "dtypes: [float8]"),
            "kernels.attention.implementations.reference.dtypes: unknown dtype 'float8'",
        ),
        ("kernels: [\n", "registry.yaml: not valid YAML"),
    ],
)
def test_errors_name_the_key_path(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        registry.load(write(tmp_path, text))
    assert expected in str(err.value)
    assert str(err.value).startswith("registry.yaml: ")
    assert "\n" not in str(err.value)
