"""Plugin discovery and the catalogue of every registered name.

Built-in plugins (the sub-packages of ``mambaverse.plugins``) are registered first, then the entry points of
group ``mambaverse``. Every contributed name is attributed to its plugin. A plugin that fails to
import, fails pluggy's validation, implements an unknown hook, or whose hook raises or returns the
wrong type is recorded as failed and skipped as a whole; the others keep working.

Discovery runs once, on the first lookup (never on ``import mambaverse``).
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import AmbiguousNameError, UnknownNameError, unknown_name
from .registry import kernel_specs, load_default
from .specs import BackboneSpec, DatasetSpec, KernelSpec, MixerSpec, ScanSpec

ENTRY_POINT_GROUP = "mambaverse"
REGISTRY_PLUGIN = "registry.yaml"

# hook name -> (catalogue kind, spec class)
HOOKS: dict[str, tuple[str, type]] = {
    "mambaverse_kernels": ("kernels", KernelSpec),
    "mambaverse_scans": ("scans", ScanSpec),
    "mambaverse_mixers": ("mixers", MixerSpec),
    "mambaverse_backbones": ("backbones", BackboneSpec),
    "mambaverse_datasets": ("datasets", DatasetSpec),
}
KINDS = ("kernels", "scans", "mixers", "backbones", "models", "datasets")

# A contributed name is looked up bare or as `plugin:name`, so it holds no ':'; a kernel's op and
# implementation are also written `op/impl` and chosen in MAMBAVERSE_KERNELS="op=impl,...".
FORBIDDEN_IN_NAMES = re.compile(r":")
FORBIDDEN_IN_KERNEL_NAMES = re.compile(r"[:/=,\s]")

# The owners a bare name that several plugins contribute resolves to, first match first; empty
# outside `names_seen_from`, where such a name is ambiguous.
_preferred_owners: ContextVar[tuple[str, ...]] = ContextVar(
    "mambaverse_preferred_owners", default=()
)


@dataclass
class Preset:
    """A named model configuration: a backbone plus config overrides."""

    name: str
    backbone: str
    config: dict[str, Any]
    plugin: str
    description: str = ""
    published: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginRecord:
    name: str
    source: str  # "builtin", "entry point <dist>", or "registry"
    module: str
    error: str | None = None
    contributed: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _spec_name(kind: str, spec: Any) -> str:
    return f"{spec.op}/{spec.impl}" if kind == "kernels" else spec.name


def _short_error(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


class Catalogue:
    """Every plugin, and every name each one contributed."""

    def __init__(self) -> None:
        self.plugins: dict[str, PluginRecord] = {}
        # kind -> name -> [(plugin, spec), ...] in registration order
        self.entries: dict[str, dict[str, list[tuple[str, Any]]]] = {k: {} for k in KINDS}
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # -- discovery -------------------------------------------------------------------------
    def discover(self) -> None:
        self._add_registry_file()
        from mambaverse.plugins import builtin_plugins

        for name, module in builtin_plugins().items():
            self._add_plugin(
                name, "builtin", lambda module=module: importlib.import_module(module), module
            )
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep.dist, "name", None) or "?"
            self._add_plugin(ep.name, f"entry point of {dist}", ep.load, ep.value)

    def _add_registry_file(self) -> None:
        registry = load_default()
        record = PluginRecord(REGISTRY_PLUGIN, "registry", "mambaverse/registry.yaml")
        self.plugins[record.name] = record
        self._commit(record, {"kernels": kernel_specs(registry)})
        presets = [
            Preset(
                name, p.backbone, dict(p.config), REGISTRY_PLUGIN, p.description, dict(p.published)
            )
            for name, p in registry.models.items()
        ]
        self._commit(record, {"models": presets})

    def _add_plugin(self, name: str, source: str, load: Any, module_name: str) -> PluginRecord:
        record = PluginRecord(name, source, module_name)
        if name in self.plugins:
            record.error = (
                f"a plugin named {name!r} is already registered ({self.plugins[name].source})"
            )
            self.plugins[f"{name} ({source})"] = record
            return record
        self.plugins[name] = record
        try:
            module = load()
            self._check_hook_names(module)
            self.pm.register(module, name=name)
        except Exception as err:
            record.error = _short_error(err)
            return record
        try:
            contributions = self._call_hooks(name, module)
        except Exception as err:
            record.error = _short_error(err)
            self.pm.unregister(name=name)
            return record
        self._commit(record, contributions)
        return record

    def register(
        self, plugin: Any, name: str, source: str = "registered at run time"
    ) -> PluginRecord:
        """Register a plugin object or module directly (no packaging), like pluggy's ``register``."""
        record = self._add_plugin(
            name, source, lambda: plugin, getattr(plugin, "__name__", type(plugin).__name__)
        )
        from .dispatch import clear_cache

        clear_cache()
        return record

    @staticmethod
    def _check_hook_names(plugin: Any) -> None:
        """Refuse a ``@hookimpl`` function that implements no hook (a typo would otherwise
        contribute nothing, silently) and a hook-named function without ``@hookimpl``."""
        marker = f"{hookspecs.PROJECT}_impl"
        for attr in dir(plugin):
            try:
                value = getattr(plugin, attr)
            except Exception:  # a property of a plugin object that fails is not a hook
                continue
            options = getattr(value, marker, None) if callable(value) else None
            marked = options is not None
            hook = (options or {}).get("specname") or attr  # @hookimpl(specname=...) names it
            if marked and hook not in HOOKS:
                close = difflib.get_close_matches(hook, HOOKS, n=1) or difflib.get_close_matches(
                    f"{hookspecs.PROJECT}_{hook}", HOOKS, n=1
                )
                hint = (
                    f" (did you mean {close[0]!r}?)"
                    if close
                    else f"; hooks are: {', '.join(HOOKS)}"
                )
                raise pluggy.PluginValidationError(plugin, f"unknown hook {hook!r}{hint}")
            if attr in HOOKS and callable(value) and not marked:
                raise pluggy.PluginValidationError(
                    plugin,
                    f"{attr} is not marked @mambaverse.hookimpl, so it would never be called",
                )

    def _call_hooks(self, plugin: str, module: ModuleType) -> dict[str, list[Any]]:
        contributions: dict[str, list[Any]] = {}
        for hook_name, (kind, spec_cls) in HOOKS.items():
            impls = [
                i
                for i in getattr(self.pm.hook, hook_name).get_hookimpls()
                if i.plugin_name == plugin
            ]
            for impl in impls:
                result = impl.function()
                if not isinstance(result, list | tuple) or not all(
                    isinstance(s, spec_cls) for s in result
                ):
                    raise TypeError(
                        f"{hook_name}() must return a list of {spec_cls.__name__}, got {result!r:.80}"
                    )
                contributions.setdefault(kind, []).extend(result)
        presets = [
            Preset(preset, spec.name, dict(config), plugin)
            for spec in contributions.get("backbones", [])
            for preset, config in spec.presets.items()
        ]
        if presets:
            contributions["models"] = presets
        for kind, specs in contributions.items():
            _check_names(kind, specs)
        return contributions

    def _commit(self, record: PluginRecord, contributions: dict[str, list[Any]]) -> None:
        for kind, specs in contributions.items():
            for spec in specs:
                name = _spec_name(kind, spec)
                self.entries[kind].setdefault(name, []).append((record.name, spec))
                record.contributed.setdefault(kind, []).append(name)

    # -- lookup ----------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def lookup(self, kind: str, name: str) -> tuple[str, Any]:
        """``(plugin, spec)`` for ``name`` or ``plugin:name``.

        An unknown name also names the plugins that failed to load: the name may be one of theirs.
        """
        try:
            return find(self.entries[kind], kind, name)
        except AmbiguousNameError:
            raise
        except UnknownNameError as err:
            failed = [key for key, record in self.plugins.items() if record.error]
            if not failed:
                raise
            names = ", ".join(repr(n) for n in failed)
            raise UnknownNameError(
                f"{err}; plugins that failed to load: {names} (`mambaverse plugins` says why)"
            ) from None

    def builtin_owners(self) -> tuple[str, ...]:
        """registry.yaml and the built-in plugins, in registration order."""
        return tuple(
            name for name, r in self.plugins.items() if r.source in ("registry", "builtin")
        )

    def clashes(self, plugin: str) -> list[str]:
        """What ``plugin`` contributed that another plugin contributed too, as
        ``"<kind> <name> (also <other plugins>)"``."""
        found = []
        for kind, names in self.plugins[plugin].contributed.items():
            for name in names:
                others = [o for o, _ in self.entries[kind][name] if o != plugin]
                if others:
                    also = ", ".join(repr(o) for o in others)
                    found.append(f"{_SINGULAR[kind]} {name!r} (also {also})")
        return found


def _check_names(kind: str, specs: list[Any]) -> None:
    """A name that cannot be looked up, or that a plugin contributes twice, is the plugin's error."""
    forbidden = FORBIDDEN_IN_KERNEL_NAMES if kind == "kernels" else FORBIDDEN_IN_NAMES
    why = (
        "no ':', '/', '=', ',' or spaces: they separate plugin, op, implementation and choices "
        "in 'plugin:impl', 'op/impl' and MAMBAVERSE_KERNELS"
        if kind == "kernels"
        else "no ':': it separates a plugin from a name in 'plugin:name'"
    )
    seen = set()
    for spec in specs:
        parts = (spec.op, spec.impl) if kind == "kernels" else (spec.name,)
        for part in parts:
            if not part or forbidden.search(part):
                raise ValueError(f"{_SINGULAR[kind]} name {part!r} cannot be looked up ({why})")
        name = _spec_name(kind, spec)
        if name in seen:
            raise ValueError(f"{_SINGULAR[kind]} {name!r} is contributed twice")
        seen.add(name)


@contextmanager
def names_seen_from(plugin: str) -> Iterator[None]:
    """Inside the block, a bare name that several plugins contribute means ``plugin``'s own, or
    else the built-in one (registry.yaml's or a built-in plugin's).

    A model is built inside it, for the plugin of its backbone: the names the model uses itself
    (its preset's backbone, its mixers, scans and layer kinds) keep their meaning when a
    third-party plugin contributes the same name. A name asked for outside, such as
    ``get_scan("zigzag")``, stays ambiguous: the error names both plugins.
    """
    token = _preferred_owners.set((plugin, *catalogue().builtin_owners()))
    try:
        yield
    finally:
        _preferred_owners.reset(token)


# The command that lists each kind (the rest: `mambaverse plugins`, per plugin).
_LISTING = {
    "models": "mambaverse list",
    "kernels": "mambaverse kernels",
    "scans": "mambaverse plugins",
    "mixers": "mambaverse plugins",
    "backbones": "mambaverse plugins",
    "datasets": "mambaverse plugins",
}

_SINGULAR = {
    "kernels": "kernel",
    "scans": "scan",
    "mixers": "mixer",
    "backbones": "backbone",
    "models": "model",
    "datasets": "dataset",
}


def find(table: dict[str, list[tuple[str, Any]]], kind: str, name: str) -> tuple[str, Any]:
    """``(owner, spec)`` for ``name`` or ``owner:name`` in ``table`` (name -> [(owner, spec)]).

    A bare name contributed by two owners is ambiguous: the error names both and the qualified
    names that resolve it (inside :func:`names_seen_from`, the preferred owner's name is taken).
    """
    plugin, sep, bare = name.rpartition(":")
    if sep:
        for owner, spec in table.get(bare, []):
            if owner == plugin:
                return owner, spec
        qualified = [f"{o}:{n}" for n, owners in table.items() for o, _ in owners]
        raise unknown_name(_SINGULAR[kind], name, qualified, listing=_LISTING.get(kind))
    owners = table.get(name)
    if not owners:
        raise unknown_name(_SINGULAR[kind], name, table, listing=_LISTING.get(kind))
    if len(owners) > 1:
        for preferred in _preferred_owners.get():
            for owner, spec in owners:
                if owner == preferred:
                    return owner, spec
        who = " and ".join(repr(o) for o, _ in owners)
        choices = ", ".join(repr(f"{o}:{name}") for o, _ in owners)
        raise AmbiguousNameError(
            f"{_SINGULAR[kind]} {name!r} is contributed by plugins {who}; use one of {choices}"
        )
    return owners[0]


_catalogue: Catalogue | None = None
_lock = threading.Lock()


def catalogue() -> Catalogue:
    """The process-wide catalogue, discovered on first use."""
    global _catalogue
    with _lock:
        if _catalogue is None:
            fresh = Catalogue()
            fresh.discover()
            _catalogue = fresh
        return _catalogue


def reset() -> None:
    """Forget the catalogue so the next lookup discovers plugins again (after installing one)."""
    global _catalogue
    with _lock:
        _catalogue = None
    load_default.cache_clear()
    from .dispatch import clear_cache

    clear_cache()
