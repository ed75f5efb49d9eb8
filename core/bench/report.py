"""What the suites share: their common options, the table they print, the JSON record they write
(every figure plus the device, date and command) and their plots' panels. ``kernels`` keeps its
own table, record and plot (one row per op, shape and implementation) and shares the device
options."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..cli import parse_device
from .measure import OK

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- options ------------------------------------------------------------------------------------
def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as :func:`resolve_device` reads them."""
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="default: bfloat16 on CUDA, else float32"
    )


def add_common_options(parser: argparse.ArgumentParser, smoke: str) -> None:
    """--device, --dtype, --warmup, --repeats, --time-budget and --smoke (``smoke`` says what
    the tiny CPU-sized run does)."""
    add_device_options(parser)
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (2; smoke 1)")
    parser.add_argument("--repeats", type=int, help="timed calls, the median counts (5; smoke 1)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="skip (and mark) the points left when this much wall time has passed",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--smoke", action="store_true", help=smoke)


def apply_defaults(
    args: argparse.Namespace, full: dict[str, Any], smoke: dict[str, Any]
) -> dict[str, Any]:
    """Fill the options left unset from ``smoke`` (with --smoke) or ``full``; return them all.
    Also applies --threads."""
    defaults = smoke if args.smoke else full
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {key: getattr(args, key) for key in full}


def int_list(text: str) -> list[int]:
    """'1024,2048' -> [1024, 2048] (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def name_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (argparse type)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def resolve_device(
    args: argparse.Namespace, cuda_dtype: str = "bfloat16"
) -> tuple[torch.device, torch.dtype]:
    """--device (default: CUDA if visible) and --dtype (default: ``cuda_dtype`` on CUDA, else
    float32)."""
    device = parse_device(args.device)
    default = cuda_dtype if device.type == "cuda" else "float32"
    return device, DTYPES[args.dtype or default]


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


# -- formatting ---------------------------------------------------------------------------------
def si(value: float | None, unit: str = "") -> str:
    """12345 -> '12.3k', 1.2e6 -> '1.20M' (a readable count or rate)."""
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def byte_size(n_bytes: int | None) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: '1.5 GiB'."""
    if n_bytes is None:
        return "-"
    for power, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n_bytes >= 2**power:
            return f"{n_bytes / 2**power:.3g} {unit}"
    return f"{n_bytes} B"


def cell(row: dict[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
    """A table cell: the status (OOM, skipped, error) where the point did not run."""
    return fmt(row.get(key)) if row.get("status", OK) == OK else row["status"]


# -- output -------------------------------------------------------------------------------------
def print_table(
    title: str, columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]], rows: list[dict]
) -> None:
    from rich.table import Table

    from ..cli_catalogue import console

    table = Table(*(header for header, _ in columns), title=title)
    for row in rows:
        table.add_row(*(render(row) for _, render in columns))
    console().print(table)


def write_record(
    out: str | Path,
    suite: str,
    args: argparse.Namespace,
    device: torch.device,
    settings: dict[str, Any],
    results: dict[str, list[dict[str, Any]]],
) -> Path:
    """``<out>/<suite>.json``: the run's settings and every row, with device, date and command."""
    path = Path(out) / f"{suite}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "suite": suite,
        "command": getattr(args, "command_line", None),
        "date": datetime.date.today().isoformat(),
        "device": describe_device(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": settings,
        **results,
    }
    path.write_text(json.dumps(record, indent=2, default=str))
    return path


def new_figure(panels: int, title: str) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(panels, 2)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat[:panels])


def line_panel(
    ax: Any,
    rows: list[dict[str, Any]],
    x: str,
    y: str,
    series: str,
    title: str,
    ylabel: str,
    logy: bool = False,
    scale: float = 1.0,
) -> None:
    """One line per ``series`` value of ``y`` × ``scale`` against ``x`` (log2 axis); points that
    did not run (OOM, skipped) are marked with a cross and their status at the panel's foot."""
    for i, name in enumerate(dict.fromkeys(r[series] for r in rows)):
        mine = [r for r in rows if r[series] == name]
        done = [r for r in mine if r.get("status", OK) == OK and r.get(y) is not None]
        color = f"C{i}"
        ax.plot(
            [r[x] for r in done], [r[y] * scale for r in done], "o-", color=color, label=name, ms=4
        )
        for r in mine:
            if r.get("status", OK) != OK:
                ax.plot(r[x], 0.03, "x", color=color, transform=ax.get_xaxis_transform(), ms=8)
                ax.annotate(
                    r["status"][:12],
                    (r[x], 0.06),
                    xycoords=ax.get_xaxis_transform(),
                    fontsize=6,
                    color=color,
                    rotation=90,
                    ha="center",
                )
    plotted = [r for r in rows if r.get("status", OK) == OK and r.get(y) is not None]
    if not plotted:  # e.g. peak memory, which only CUDA counts
        ax.text(0.5, 0.5, "not measured here", ha="center", transform=ax.transAxes, fontsize=8)
    ax.set_xscale("log", base=2)
    if logy and any(r[y] > 0 for r in plotted):
        ax.set_yscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_figure(fig: Any, out: str | Path, suite: str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(out) / f"{suite}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
