"""registry.yaml: the central, declarative registry of kernels and model presets.

Schema (every level rejects unknown keys)::

    kernels:
      <op>:
        description: str
        implementations:
          <impl>: {target: "mambaverse.kernels.<op>.<module>:<function>", devices: [...],
                   dtypes: [...], requires: [...], description: str}
        default: {<device type>: [<impl>, ...]}   # first available one wins
    models:
      <preset>: {backbone: <registered backbone>, config: {...}, description: str,
                 published: {...}}                 # facts from the paper, for docs and tests

Kernel targets must live inside this package: the file cannot make the program import arbitrary
code. Backbone names are checked when a preset is used, since plugins register them.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError
from .specs import KernelSpec
from .validation import validate

PACKAGE = "mambaverse"
DTYPES = ("float16", "bfloat16", "float32", "float64")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Implementation(_Strict):
    target: str
    devices: list[str] = Field(default_factory=lambda: ["cpu", "cuda"])
    dtypes: list[str] = Field(default_factory=lambda: list(DTYPES))
    requires: list[str] = Field(default_factory=list)
    description: str = ""


class Op(_Strict):
    description: str = ""
    implementations: dict[str, Implementation]
    default: dict[str, list[str]] = Field(default_factory=dict)


class Preset(_Strict):
    backbone: str
    config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    published: dict[str, Any] = Field(default_factory=dict)


class RegistryFile(_Strict):
    version: int = 1
    kernels: dict[str, Op] = Field(default_factory=dict)
    models: dict[str, Preset] = Field(default_factory=dict)


def default_path() -> Path:
    """registry.yaml inside the installed package (a link to the repository's file in a checkout)."""
    return Path(__file__).with_name("registry.yaml")


def _module_file_exists(module: str) -> bool:
    """Whether ``module`` exists, importing nothing below ``mambaverse`` itself."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    # Sub-packages mapped to other folders (mambaverse.kernels -> kernels/) are found through
    # their own spec, which imports only their light __init__.
    if len(parts) > 2 and parts[1] in ("kernels", "plugins"):
        sub = importlib.util.find_spec(".".join(parts[:2]))
        locations = list(sub.submodule_search_locations or []) if sub else []
        parts = parts[1:]
    for location in locations:
        path = Path(location).joinpath(*parts[1:])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return True
    return False


def _check(registry: RegistryFile, source: str) -> None:
    for op_name, op in registry.kernels.items():
        for impl_name, impl in op.implementations.items():
            where = f"{source}: kernels.{op_name}.implementations.{impl_name}"
            module, sep, function = impl.target.partition(":")
            if not sep or not function:
                raise ConfigError(f"{where}.target: {impl.target!r} is not 'module:function'")
            if not module.startswith(PACKAGE + "."):
                raise ConfigError(
                    f"{where}.target: {impl.target!r} is outside the {PACKAGE} package"
                )
            if not _module_file_exists(module):
                raise ConfigError(f"{where}.target: module {module!r} does not exist")
            bad = sorted(set(impl.dtypes) - set(DTYPES))
            if bad:
                raise ConfigError(
                    f"{where}.dtypes: unknown dtype {bad[0]!r}; valid: {', '.join(DTYPES)}"
                )
        for device, choices in op.default.items():
            for choice in choices:
                if choice not in op.implementations:
                    known = ", ".join(op.implementations)
                    raise ConfigError(
                        f"{source}: kernels.{op_name}.default.{device}: unknown implementation {choice!r}; "
                        f"this op has: {known}"
                    )


def load(path: str | Path) -> RegistryFile:
    """Read and validate a registry file; errors name the offending key path."""
    path = Path(path)
    source = path.name
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source}: not valid YAML{where}: {getattr(err, 'problem', None) or err}"
        ) from None
    registry = validate(RegistryFile, data, source)
    _check(registry, source)
    return registry


@cache
def load_default() -> RegistryFile:
    return load(default_path())


def kernel_specs(registry: RegistryFile) -> list[KernelSpec]:
    return [
        KernelSpec(
            op=op_name,
            impl=impl_name,
            fn=impl.target,
            devices=tuple(impl.devices),
            dtypes=tuple(impl.dtypes),
            requires=tuple(impl.requires),
            description=impl.description,
        )
        for op_name, op in registry.kernels.items()
        for impl_name, impl in op.implementations.items()
    ]
