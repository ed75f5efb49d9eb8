"""Which implementation of a kernel op runs.

Order of precedence, first match wins:

1. the ``impl=`` argument of the call;
2. the environment, ``MAMBAVERSE_KERNELS="selective_scan=reference,attention=sdpa"``;
3. the model's config (``kernels={"attention": "sdpa"}``), applied with :func:`kernel_choices`;
4. registry.yaml's default list for the device type: the first implementation that can run.

A choice made by 1-3 that cannot run raises :class:`KernelUnavailableError` saying why; only the
registry default falls through to the next candidate.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import (
    AmbiguousNameError,
    ConfigError,
    KernelUnavailableError,
    UnknownNameError,
    unknown_name,
)
from .manager import REGISTRY_PLUGIN, catalogue, find
from .registry import load_default
from .specs import KernelSpec

ENV_VAR = "MAMBAVERSE_KERNELS"

_model_choices: ContextVar[tuple[tuple[str, str], ...]] = ContextVar(
    "mambaverse_kernel_choices", default=()
)


@dataclass(frozen=True)
class KernelChoice:
    spec: KernelSpec
    reason: str

    @property
    def impl(self) -> str:
        return self.spec.impl


@contextmanager
def kernel_choices(choices: Mapping[str, str] | None) -> Iterator[None]:
    """Use these ``op -> impl`` choices (a model's config) for the calls inside the block."""
    token = _model_choices.set(tuple(sorted((choices or {}).items())))
    try:
        yield
    finally:
        _model_choices.reset(token)


@lru_cache(maxsize=16)
def _parse_env(value: str) -> tuple[tuple[str, str], ...]:
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        op, sep, impl = item.partition("=")
        if not sep or not op.strip() or not impl.strip():
            raise ConfigError(
                f"{ENV_VAR}: {item!r} is not 'op=impl' (e.g. {ENV_VAR}='attention=sdpa')"
            )
        if pairs.get(op.strip(), impl.strip()) != impl.strip():  # the same choice twice is fine
            raise ConfigError(
                f"{ENV_VAR}: {op.strip()!r} is chosen twice ({pairs[op.strip()]!r} and "
                f"{impl.strip()!r}); keep one"
            )
        pairs[op.strip()] = impl.strip()
    return tuple(pairs.items())


def _normalise(device: Any, dtype: Any) -> tuple[str | None, str | None]:
    device_type = getattr(device, "type", device)
    if isinstance(device_type, str):
        device_type = device_type.split(":")[0]
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    return device_type, dtype_name


def _owners(op: str) -> dict[str, list[tuple[str, KernelSpec]]]:
    """impl name -> [(plugin, spec), ...] for ``op``."""
    table = {
        name.partition("/")[2]: owners
        for name, owners in catalogue().entries["kernels"].items()
        if name.partition("/")[0] == op
    }
    if not table:
        raise unknown_name("kernel op", op, kernel_ops(), listing="mambaverse kernels")
    return table


def implementations(op: str) -> dict[str, KernelSpec]:
    """impl name -> spec for ``op`` (a qualified ``plugin:impl`` when two plugins share one)."""
    return {
        impl if len(owners) == 1 else f"{plugin}:{impl}": spec
        for impl, owners in _owners(op).items()
        for plugin, spec in owners
    }


def kernel_ops() -> list[str]:
    """Every op some plugin registers a kernel for, sorted."""
    return sorted({name.split("/")[0] for name in catalogue().entries["kernels"]})


def _implementation(op: str, impl: str, reason: str) -> KernelSpec:
    """The registered implementation ``impl`` (or ``plugin:impl``) of ``op``, asked for by
    ``reason``; a bare name that two plugins share is an error naming both."""
    what = f"implementation of {op!r} ({reason})"
    try:
        return find(_owners(op), "kernels", impl)[1]
    except AmbiguousNameError as err:
        raise AmbiguousNameError(f"{what}: {err}") from None
    except UnknownNameError:
        raise unknown_name(what, impl, implementations(op), listing="mambaverse kernels") from None


def _explicit(
    op: str, impl: str, reason: str, device: str | None, dtype: str | None
) -> KernelChoice:
    spec = _implementation(op, impl, reason)
    why = spec.unavailable_reason(device, dtype)
    if why is not None:
        raise KernelUnavailableError(f"{op}={impl} (chosen by {reason}) cannot run: {why}")
    return KernelChoice(spec, reason)


def check_choices(choices: Any, source: str) -> None:
    """Refuse a ``kernels`` config that is not ``{op: impl}`` with registered names (checked when
    a model is built, not at its first forward)."""
    if choices is None:
        return
    if not isinstance(choices, Mapping) or not all(
        isinstance(op, str) and isinstance(impl, str) for op, impl in choices.items()
    ):
        raise ConfigError(
            f"{source}: expected a mapping of kernel op to implementation, e.g. "
            f"{{'selective_scan': 'reference'}}, got {choices!r}"
        )
    try:
        _check_ops(tuple(choices.items()), source)
        for op, impl in choices.items():
            _implementation(op, impl, source)
    except UnknownNameError as err:  # a config saved on another machine, say
        raise UnknownNameError(f"{err}; kernels=None uses this machine's defaults") from None


def _check_ops(choices: tuple[tuple[str, str], ...], source: str) -> None:
    """A choice naming no registered op (a typo) would be ignored silently: refuse it."""
    ops = kernel_ops()
    for op, _impl in choices:
        if op not in ops:
            err = unknown_name("kernel op", op, ops, listing="mambaverse kernels")
            raise UnknownNameError(f"{source}: {err}")


@lru_cache(maxsize=512)
def _choose(
    op: str,
    impl: str | None,
    env: str,
    model: tuple[tuple[str, str], ...],
    device: str | None,
    dtype: str | None,
    triton_interpret: str,  # a key only: whether Triton can run on the CPU changes the answer
) -> KernelChoice:
    if impl is not None:
        return _explicit(op, impl, "the impl= argument", device, dtype)
    _check_ops(_parse_env(env), ENV_VAR)
    _check_ops(model, "the model config's kernels")
    env_choice = dict(_parse_env(env)).get(op)
    if env_choice is not None:
        return _explicit(op, env_choice, ENV_VAR, device, dtype)
    model_choice = dict(model).get(op)
    if model_choice is not None:
        return _explicit(op, model_choice, "the model config", device, dtype)

    specs = implementations(op)
    op_entry = load_default().kernels.get(op)
    # registry.yaml's defaults name its own implementations, whatever else a plugin calls so.
    preferred = [
        name if name in specs else f"{REGISTRY_PLUGIN}:{name}"
        for name in (op_entry.default.get(device or "cpu", []) if op_entry else [])
    ]
    candidates = preferred + [name for name in specs if name not in preferred]
    refusals = []
    for name in candidates:
        why = specs[name].unavailable_reason(device, dtype)
        if why is None:
            origin = "registry default" if name in preferred else "first available"
            return KernelChoice(specs[name], f"{origin} for {device or 'any device'}")
        refusals.append(f"{name}: {why}")
    raise KernelUnavailableError(
        f"no implementation of {op!r} can run here: " + "; ".join(refusals)
    )


def choose_kernel(
    op: str, impl: str | None = None, device: Any = None, dtype: Any = None
) -> KernelChoice:
    """The implementation that a call of ``op`` on this device and dtype would use, and why."""
    device_type, dtype_name = _normalise(device, dtype)
    return _choose(
        op,
        impl,
        os.environ.get(ENV_VAR, ""),
        _model_choices.get(),
        device_type,
        dtype_name,
        # Only the CPU's choice depends on it (Triton kernels run there interpreted).
        os.environ.get("TRITON_INTERPRET", "") if device_type == "cpu" else "",
    )


def get_kernel(
    op: str, impl: str | None = None, device: Any = None, dtype: Any = None
) -> Callable[..., Any]:
    """The function implementing ``op`` (see the module docstring for how it is chosen)."""
    spec = choose_kernel(op, impl, device, dtype).spec
    fn = _loaded.get(id(spec))  # specs live as long as the catalogue; clear_cache() empties it
    if fn is None:
        fn = _loaded[id(spec)] = _load(spec)
    return fn


_loaded: dict[int, Callable[..., Any]] = {}


def owner(spec: KernelSpec) -> str:
    """The plugin that contributed ``spec`` (``REGISTRY_PLUGIN`` for registry.yaml's)."""
    owners = catalogue().entries["kernels"].get(f"{spec.op}/{spec.impl}", [])
    return next((plugin for plugin, s in owners if s is spec), "?")


def load_problem(spec: KernelSpec) -> str | None:
    """Why a plugin's kernel ``spec`` would fail when called (its module does not import, or
    its function cannot take the op's arguments); None when it loads. registry.yaml's kernels
    are not imported for this (they are the project's own, and tested)."""
    if owner(spec) == REGISTRY_PLUGIN or id(spec) in _loaded:
        return None
    try:
        _loaded[id(spec)] = _load(spec)
    except Exception as err:  # the plugin's import error, or the refusal of _load
        return (
            str(err) if isinstance(err, KernelUnavailableError) else f"{type(err).__name__}: {err}"
        )
    return None


def _load(spec: KernelSpec) -> Callable[..., Any]:
    """``spec``'s function; a plugin's that cannot take as many arguments as its op passes is
    refused here, by name, rather than failing inside the op with a bare TypeError."""
    fn = spec.load()
    plugin = owner(spec)
    if plugin != REGISTRY_PLUGIN:
        problem = _signature_problem(spec.op, fn)
        if problem:
            raise KernelUnavailableError(
                f"kernel {spec.op}/{spec.impl} of plugin {plugin!r} {problem}; fix the plugin, "
                f"or choose another implementation ({ENV_VAR}='{spec.op}=reference')"
            )
    return fn


def _signature_problem(op: str, fn: Callable[..., Any]) -> str | None:
    """Why ``fn`` cannot take the arguments of the public op ``mambaverse.kernels.<op>`` (``None``
    when it can, or when the op has no public function to compare with).

    Ops pass their first arguments by position and the rest by name, at a split that differs
    from op to op: ``fn`` is refused only if no split fits it."""
    import mambaverse.kernels

    public = getattr(mambaverse.kernels, op, None)
    if public is None:
        return None
    try:
        wanted = [n for n in inspect.signature(public).parameters if n != "impl"]
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        return None
    for split in range(len(wanted), -1, -1):
        try:
            signature.bind(*wanted[:split], **dict.fromkeys(wanted[split:]))
            return None
        except TypeError:
            continue
    return (
        f"cannot take the op's arguments {op}({', '.join(wanted)}), by position or by name "
        f"(it takes {signature})"
    )


def clear_cache() -> None:
    _choose.cache_clear()
    _loaded.clear()
