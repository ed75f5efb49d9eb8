"""The public functions: build models and look up everything plugins registered, by name."""

from __future__ import annotations

import fnmatch
import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from .bounds import out_of_bounds
from .dispatch import check_choices, choose_kernel, implementations, kernel_ops, load_problem
from .errors import ConfigError, KernelUnavailableError, unknown_keys, unknown_name
from .manager import REGISTRY_PLUGIN, PluginRecord, Preset, catalogue, names_seen_from
from .specs import TASKS, BackboneSpec, MixerSpec, ScanSpec


def _keyword_parameters(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """Keyword parameter -> default (``inspect.Parameter.empty`` if required), and **kwargs?"""
    params, open_ended = {}, False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            open_ended = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            params[p.name] = p.default
    return params, open_ended


def with_defaults(fn: Callable[..., Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` completed with the defaults of ``fn``'s keyword parameters: the full config a
    builder (or mixer factory) runs with."""
    params, _ = _keyword_parameters(fn)
    return {
        **{k: v for k, v in params.items() if v is not inspect.Parameter.empty},
        **config,
    }


def check_keys(what: str, fn: Callable[..., Any], keys: Any, skip: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` listing the valid keys if ``keys`` has one ``fn`` does not take."""
    params, open_ended = _keyword_parameters(fn)
    unknown = set(keys) - set(params)
    if unknown and not open_ended:
        raise unknown_keys(what, unknown, [p for p in params if p not in skip])


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits a plain type hint (int, float, bool, str, or one of those or None);
    None for the hints this does not judge (sequences, mappings, Literals, which the builders
    check with the nearest names, unions of several). Numbers are judged as numbers (numpy's
    too), paths pass for strings; an ``Annotated`` hint by its type (its bounds: _broken_bound)."""
    if get_origin(hint) is Annotated:
        hint = hint.__origin__
    if get_origin(hint) in (Union, UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return None
        return value is None or _accepts(args[0], value)
    is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool
    if hint is bool:
        return is_bool
    if hint is int:
        return isinstance(value, numbers.Integral) and not is_bool
    if hint is float:
        return isinstance(value, numbers.Real) and not is_bool
    if hint is str:
        return isinstance(value, str | os.PathLike)
    return None


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The builder's resolved type hints; none where they do not resolve here (a third party's
    names that are not importable, say), which leaves its values to the builder."""
    try:
        return get_type_hints(fn.__init__ if inspect.isclass(fn) else fn, include_extras=True)
    except Exception:
        return {}


def check_types(
    what: str, fn: Callable[..., Any], config: dict[str, Any], hints: dict[str, Any]
) -> None:
    """Raise :class:`ConfigError` for a value that does not fit its parameter's plain type hint
    in ``hints`` (``_hints(fn)``; ``depth="four"``), before the builder fails on it with an error
    about something else. A parameter's own default always passes (``x: int = None``)."""
    defaults = _keyword_parameters(fn)[0]
    for key, value in config.items():
        if key not in hints or (key in defaults and value is defaults[key]):
            continue
        if _accepts(hints[key], value) is False:
            raise ConfigError(
                f"{what}: {key}={value!r} ({type(value).__name__}) does not fit its type, "
                f"{_type_text(hints[key])}"
            )
        broken = _broken_bound(hints[key], value)
        if broken:
            raise ConfigError(f"{what}: {key}={value!r} is out of range: it must be {broken}")


def _type_text(hint: Any) -> str:
    """``int``, ``int | None``: a hint as a user writes it (bounds left to their own message)."""
    if get_origin(hint) is Annotated:
        return _type_text(hint.__origin__)
    if get_origin(hint) in (Union, UnionType):
        return " | ".join(_type_text(option) for option in get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", None) or str(hint)


def check_config(
    what: str, fn: Callable[..., Any], config: dict[str, Any], skip: tuple[str, ...] = ()
) -> None:
    """:func:`check_keys` (the valid keys but ``skip`` listed), then :func:`check_types` (types
    and the bounds of ``mambaverse.bounds``) for ``fn(**config)``, before it is called."""
    check_keys(what, fn, config, skip)
    check_types(what, fn, config, _hints(fn))


def _broken_bound(hint: Any, value: Any) -> str | None:
    """The bound of an ``Annotated`` hint (or of such a member of a union: ``Positive | None``,
    ``Positive | tuple[int, int]``) that a number ``value`` breaks (mambaverse.bounds)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    for option in _hint_options(hint):
        if get_origin(option) is Annotated:
            return out_of_bounds(option.__metadata__, value)
    return None


# Words a config file may use for a boolean (YAML 1.1's; the training config reads YAML 1.2's
# true/false only, so that `precision: no` stays a word): taken as booleans where a builder's
# parameter is hinted bool.
_BOOLEAN_WORDS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


def _hint_options(hint: Any) -> tuple[Any, ...]:
    """The members of a union hint (``X | None`` -> ``(X, NoneType)``), or the hint alone."""
    return get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)


def _boolean_words(config: dict[str, Any], hints: dict[str, Any]) -> dict[str, Any]:
    """``config`` with yes/no/on/off/true/false strings turned into booleans where the hint of
    the key is ``bool`` (or ``bool | None``)."""
    return {
        key: _BOOLEAN_WORDS[value.lower()]
        if isinstance(value, str)
        and value.lower() in _BOOLEAN_WORDS
        and bool in _hint_options(hints.get(key))
        else value
        for key, value in config.items()
    }


def _takes_kernel_choices(hints: dict[str, Any]) -> bool:
    """Whether a builder with these type hints takes ``kernels`` as the op -> implementation
    mapping every built-in model takes (hinted as a mapping, or not hinted)."""
    hint = hints.get("kernels")
    if hint is None:
        return True
    return any(
        get_origin(o) in (dict, Mapping) or o in (dict, Mapping) for o in _hint_options(hint)
    )


# -- models ------------------------------------------------------------------------------------
def _preset(name: str) -> Preset:
    return catalogue().lookup("models", name)[1]


def _backbone(preset: Preset) -> tuple[str, BackboneSpec]:
    cat = catalogue()
    name = preset.backbone
    if ":" not in name and preset.plugin != REGISTRY_PLUGIN:
        name = f"{preset.plugin}:{name}"  # a plugin's preset always means its own backbone
    try:
        with names_seen_from(preset.plugin):
            return cat.lookup("backbones", name)
    except LookupError as err:
        raise ConfigError(
            f"model {preset.name!r} (from {preset.plugin}): backbone: {err}"
        ) from None


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Preset names matching a shell-style ``pattern``, optionally only those of one ``task``."""
    if task is not None and task not in TASKS:
        raise unknown_name("task", task, TASKS)
    names = [n for n in catalogue().names("models") if fnmatch.fnmatchcase(n, pattern)]
    if task is None:
        return names
    matching = []
    for name in names:
        try:
            if _backbone(_preset(name))[1].task == task:
                matching.append(name)
        except (LookupError, ConfigError):
            continue  # ambiguous or broken presets are listed only without a task filter
    return matching


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The preset's config merged with ``overrides``; unknown keys are an error listing the valid ones."""
    preset = _preset(name)
    _, spec = _backbone(preset)
    builder = spec.load()
    check_keys(f"config of model {name!r}", builder, preset.config)
    check_keys(f"override for model {name!r}", builder, overrides)
    return {**preset.config, **overrides}


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> Any:
    """Build the model registered as ``name`` (a preset, or ``plugin:preset``).

    ``overrides`` replace the preset's config values, e.g.
    ``create_model("vim_tiny", num_classes=10, img_size=32, scan="atrous")``.
    The model carries ``model.mambaverse_config`` (backbone, preset and full config) so that
    :func:`mambaverse.save_pretrained` can write a checkpoint that rebuilds it.
    ``pretrained`` is there for timm's and open_clip's callers: no weights are downloaded, so
    ``True`` is an error that names the ways to load a checkpoint.
    """
    if pretrained:
        raise ConfigError(
            f"create_model({name!r}, pretrained={pretrained!r}): mambaverse downloads no weights; "
            "build the model and load a checkpoint with mambaverse.load_pretrained(directory) "
            "(a mambaverse or Hugging Face checkpoint directory)"
        )
    config = model_config(name, **overrides)
    backbone_plugin, spec = _backbone(_preset(name))
    return build_backbone(f"{backbone_plugin}:{spec.name}", config, preset=name)


def build_backbone(backbone: str, config: dict[str, Any], preset: str | None = None) -> Any:
    """Build backbone ``backbone`` (``name`` or ``plugin:name``) from a full config."""
    plugin, spec = catalogue().lookup("backbones", backbone)
    builder = spec.load()
    check_keys(f"config of backbone {spec.name!r}", builder, config)
    hints = _hints(builder)
    config = _boolean_words(config, hints)
    check_types(f"config of {preset or spec.name!r}", builder, config, hints)
    if _takes_kernel_choices(hints):
        check_choices(config.get("kernels"), f"the kernels config of {preset or spec.name!r}")
    with names_seen_from(plugin):
        model = builder(**config)
    model.mambaverse_config = {
        "backbone": f"{plugin}:{spec.name}",
        "model": preset,
        "config": dict(config),
    }
    return model


def count_parameters(name: Any, **overrides: Any) -> int:
    """Parameters of a built model, or of the preset ``name`` counted on the ``meta`` device (no
    memory is used)."""
    import torch

    if isinstance(name, torch.nn.Module):
        if overrides:
            raise ConfigError(
                f"count_parameters: overrides {sorted(overrides)} apply to a preset name, "
                "not to a built model"
            )
        return sum(p.numel() for p in name.parameters())
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def model_summary(name: str) -> dict[str, Any]:
    """Backbone, task and origin of a preset, without importing its model code."""
    preset = _preset(name)
    backbone_plugin, spec = _backbone(preset)
    return {
        "name": preset.name,
        "backbone": spec.name,
        "task": spec.task,
        "preset_from": preset.plugin,
        "backbone_from": backbone_plugin,
        "description": preset.description or spec.description,
        "published": preset.published,
    }


def model_info(name: str, count_params: bool = True) -> dict[str, Any]:
    """What ``name`` is: :func:`model_summary` plus the full config and the parameter count."""
    info = model_summary(name)
    info["config"] = with_defaults(_backbone(_preset(name))[1].load(), _preset(name).config)
    if count_params:
        info["parameters"] = count_parameters(name)
    return info


# -- plugins, kernels, scans, mixers -------------------------------------------------------------
def register_plugin(plugin: Any, name: str) -> PluginRecord:
    """Register a plugin (a module or object with ``@hookimpl`` functions) in this process.

    For notebooks and tests; packages register through the ``mambaverse`` entry-point group.
    A failure is recorded on the returned record (``record.error``), as for any plugin.
    """
    return catalogue().register(plugin, name)


def list_plugins() -> list[PluginRecord]:
    """Every plugin found, in registration order, with what it contributed or why it failed."""
    return list(catalogue().plugins.values())


# The device types a kernel may be chosen for (torch's names).
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def list_kernels(device: str | None = None) -> list[dict[str, Any]]:
    """One row per op and implementation: where it runs, whether it can here, and the choice made."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = str(device).split(":")[0]
    if device_type not in DEVICE_TYPES:
        raise unknown_name("device type", device_type, DEVICE_TYPES)
    rows = []
    for op in kernel_ops():
        try:
            chosen = choose_kernel(op, device=device)
            reason = chosen.reason
        except (KernelUnavailableError, ConfigError, LookupError) as err:
            # No implementation will run: every row of the op says why (a call would raise it).
            chosen, reason = None, f"none can be used: {err}"
        if chosen is not None and (problem := load_problem(chosen.spec)):
            chosen, reason = None, f"none can be used: {problem}"  # as a call would raise
        for impl, spec in implementations(op).items():
            rows.append(
                {
                    "op": op,
                    "impl": impl,
                    "devices": list(spec.devices),
                    "dtypes": list(spec.dtypes),
                    "unavailable": spec.unavailable_reason(device_type) or load_problem(spec),
                    "chosen": chosen is not None and spec is chosen.spec,
                    "reason": reason if chosen is None or spec is chosen.spec else "",
                    "description": spec.description,
                }
            )
    return rows


def list_scans() -> list[str]:
    return catalogue().names("scans")


def get_scan(name: str) -> ScanSpec:
    """The scan ``name``; ``flatten, merge = get_scan(name).load()``."""
    return catalogue().lookup("scans", name)[1]


def list_mixers(kind: str | None = None) -> list[str]:
    cat = catalogue()
    return [
        n
        for n in cat.names("mixers")
        if kind is None or any(s.kind == kind for _, s in cat.entries["mixers"][n])
    ]


def get_mixer(name: str) -> MixerSpec:
    return catalogue().lookup("mixers", name)[1]


def create_mixer(name: str, dim: int, **config: Any) -> Any:
    """Build mixer ``name`` for width ``dim``; unknown config keys list the valid ones."""
    spec = get_mixer(name)
    factory = spec.load()
    # The width goes first by position: check it under the factory's own name for it.
    first = next(
        (p.name for p in inspect.signature(factory).parameters.values() if p.name != "self"),
        "dim",
    )
    check_config(f"mixer {name!r} config", factory, {**config, first: dim}, skip=(first,))
    return factory(dim, **config)
