"""The ``mambaverse`` command line.

Each sub-command is a :class:`Command` (``configure(parser)``, ``run(args) -> int``) in a module
imported only when that command runs, so ``mambaverse --help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, MambaverseError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("mambaverse.cli_catalogue:list_command", "list model presets"),
    "info": (
        "mambaverse.cli_catalogue:info_command",
        "show a model preset: backbone, config, parameters",
    ),
    "plugins": (
        "mambaverse.cli_catalogue:plugins_command",
        "list plugins, what they contributed, and failures",
    ),
    "kernels": (
        "mambaverse.cli_catalogue:kernels_command",
        "list kernel implementations and which one runs here",
    ),
    "train": ("mambaverse.train.command:train_command", "fine-tune a model (accelerate loop)"),
    "bench": (
        "mambaverse.bench:bench_command",
        "benchmark suites: kernels, scaling, vision, generation, synthetic",
    ),
    "caption": (
        "mambaverse.plugins.cobra.cli:caption_command",
        "caption images with a trained VLM",
    ),
}


@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def _command(target: str) -> Command:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mambaverse", description="State-space (Mamba) and hybrid models, as plugins."
    )
    parser.add_argument("--version", action="version", version=f"mambaverse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_target=target)
    return parser


def parse_device(text: str | None) -> Any:
    """``--device``: a ``torch.device`` that can run here (default: CUDA if visible, else CPU)."""
    import torch

    try:
        device = torch.device(text or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ConfigError(f"--device {text}: not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: no CUDA device is visible; use --device cpu")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Configure only the chosen sub-command, so other commands' modules are never imported.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        _command(COMMANDS[chosen][0]).configure(sub_action.choices[chosen])
    args = parser.parse_args(argv)
    args._argv = argv  # the words as given, for a command that must know their order
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(_command(args._target).run(args) or 0)
    except MambaverseError as err:
        print(f"mambaverse {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mambaverse {args.command}: interrupted", file=sys.stderr)
        return 130
