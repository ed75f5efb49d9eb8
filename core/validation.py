"""Turn pydantic validation errors into one-line messages that name the key path and the fix."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, unknown_keys


def _strip_union(tp: Any) -> Any:
    """``X | None`` -> ``X`` (the first member that is a model or a container)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if members else tp
    return tp


def _step(tp: Any, part: Any) -> Any:
    tp = _strip_union(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin in (list, tuple):
        return typing.get_args(tp)[0]
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the value at ``loc``."""
    current: Any = root
    for part in loc:
        current = _step(current, part)
    current = _strip_union(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _sections_with(model: type[BaseModel], key: str) -> list[str]:
    """The fields of ``model`` that are sections (models) holding a key ``key``."""
    return [
        name
        for name in model.model_fields
        if (section := _model_at(model, (name,))) is not None and key in section.model_fields
    ]


def config_error(err: ValidationError, root: type[BaseModel], source: str) -> ConfigError:
    """The first problem in ``err`` as a one-line :class:`ConfigError` naming the key path."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        parent_path = ".".join(str(p) for p in loc[:-1]) or "(top level)"
        message = f"{source}: {parent_path}: {unknown_keys('', [str(loc[-1])], valid)}"
        inside = _sections_with(parent, str(loc[-1])) if parent else []
        if inside:  # `lr=1e-3` for `optim.lr=1e-3`
            keys = " or ".join(f"{section}.{loc[-1]}" for section in inside)
            message += f"; {loc[-1]} is a key of a section: {keys}"
        return ConfigError(message)
    if first["type"] == "missing":
        return ConfigError(f"{source}: {path}: required key is missing")
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        # A check of several keys together: its message names them and the way out.
        return ConfigError(f"{source}: {path}: {first['msg'].removeprefix('Value error, ')}")
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return ConfigError(f"{source}: {path}: {first['msg']} (got {shown})")


def validate(model: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise config_error(err, model, source) from None
