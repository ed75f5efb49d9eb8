"""Errors that name the problem and the way out."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MambaverseError(Exception):
    """Base class of every error mambaverse raises on purpose."""


class UnknownNameError(MambaverseError, LookupError):
    """A registered name (model, scan, mixer, kernel, plugin) that does not exist."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousNameError(UnknownNameError):
    """A bare name that two plugins contribute; qualify it as ``plugin:name``."""


class ConfigError(MambaverseError, ValueError):
    """A config key or value that is not valid."""


class InputError(MambaverseError, ValueError):
    """Input data a model cannot take as given (a prompt or a training row over its length)."""


class KernelUnavailableError(MambaverseError, RuntimeError):
    """The kernel implementation asked for cannot run on these inputs or this machine."""


def nearest(name: str, known: Iterable[str], n: int = 5) -> list[str]:
    """Known names closest to ``name``: close spellings first, then names sharing a prefix."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    stem = name.split("_")[0].split(":")[-1]
    prefixed = [k for k in known if stem and k.split(":")[-1].startswith(stem) and k not in close]
    return (close + prefixed)[:n]


# Up to this many known names are listed in full when none is close to the one asked for.
LISTED_NAMES = 16


def unknown_name(
    kind: str, name: str, known: Iterable[str], listing: str | None = None
) -> UnknownNameError:
    """An unknown ``kind`` called ``name``: the nearest known names, else all of them (or their
    count and ``listing``, the command that lists them, when there are many)."""
    known = sorted(set(known))
    suggestions = nearest(name, known)
    if suggestions:
        hint = "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
    elif len(known) <= LISTED_NAMES and known:
        hint = "known: " + ", ".join(repr(k) for k in known)
    elif known:
        hint = f"{len(known)} are registered" + (f"; list them with `{listing}`" if listing else "")
    else:
        hint = "none is registered"
    return UnknownNameError(f"unknown {kind} {name!r}: {hint}")


def unknown_keys(what: str, keys: Iterable[str], valid: Iterable[str]) -> ConfigError:
    keys, valid = sorted(keys), sorted(valid)
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = f"{what} key" if what else "key"
    return ConfigError(f"unknown {noun} {', '.join(parts)}; valid keys: {', '.join(valid)}")
