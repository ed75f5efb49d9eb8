"""``mambaverse list | info | plugins | kernels``: what is registered, as tables."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from . import api
from .cli import Command
from .manager import catalogue


def console() -> Console:
    # Piped output (tests, `| grep`) gets wide lines instead of wrapped table cells.
    return Console() if sys.stdout.isatty() else Console(width=240, no_color=True)


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. '*vim*'")
    parser.add_argument("--task", choices=["vision", "lm", "vlm"], help="only models of this task")


def _run_list(args: argparse.Namespace) -> int:
    names = api.list_models(args.pattern, task=args.task)
    if not names:
        print(
            f"no model matches {args.pattern!r}" + (f" with task {args.task}" if args.task else "")
        )
        return 1
    table = Table("model", "backbone", "task", "from")
    for name in names:
        try:
            summary = api.model_summary(name)
        except (LookupError, ValueError) as err:  # one broken preset does not hide the others
            table.add_row(name, "?", f"unusable: {err}", "")
            continue
        table.add_row(name, summary["backbone"], summary["task"], summary["preset_from"])
    console().print(table)
    return 0


def _configure_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a model preset, e.g. vim_tiny")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_info(args: argparse.Namespace) -> int:
    info = api.model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    out = console()
    out.print(f"[bold]{info['name']}[/bold]  backbone={info['backbone']}  task={info['task']}")
    out.print(f"parameters: {info['parameters']:,}")
    out.print(f"from: preset {info['preset_from']}, backbone {info['backbone_from']}")
    if info["description"]:
        out.print(info["description"])
    table = Table("config key", "value")
    for key, value in info["config"].items():
        table.add_row(key, repr(value))
    out.print(table)
    for key, value in info["published"].items():
        out.print(f"published {key}: {value}")
    return 0


def _configure_plain(parser: argparse.ArgumentParser) -> None:
    del parser


def _run_plugins(args: argparse.Namespace) -> int:
    table = Table("plugin", "source", "status", "contributed")
    for record in api.list_plugins():
        status = "ok" if record.ok else f"FAILED: {record.error}"
        if record.ok and record.source not in ("registry", "builtin"):
            clashes = catalogue().clashes(record.name)
            if clashes:  # its bare names are ambiguous (built-in models keep their own)
                status += f"; shares names, reach its own as {record.name}:<name>: " + "; ".join(
                    clashes
                )
        contributed = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in record.contributed.items()
        )
        table.add_row(record.name, record.source, status, contributed)
    console().print(table)
    return 0


def _configure_kernels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", help="device type to choose for (default: cuda if visible, else cpu)"
    )


def _run_kernels(args: argparse.Namespace) -> int:
    rows = api.list_kernels(args.device)
    table = Table("op", "impl", "devices", "here", "used", "why")
    for row in rows:
        here = "yes" if row["unavailable"] is None else f"no: {row['unavailable']}"
        table.add_row(
            row["op"],
            row["impl"],
            ",".join(row["devices"]),
            here,
            "*" if row["chosen"] else "",
            row["reason"],
        )
    console().print(table)
    return 0


list_command = Command(_configure_list, _run_list)
info_command = Command(_configure_info, _run_info)
plugins_command = Command(_configure_plain, _run_plugins)
kernels_command = Command(_configure_kernels, _run_kernels)
