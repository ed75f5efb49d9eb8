"""``mambaverse bench SUITE [options]``: benchmark suites that measure Mamba against Transformers.

Every suite prints a table, and writes ``<out>/<suite>.json`` (every figure, with the device,
the date and the command) and ``<out>/<suite>.png`` (its plot). A suite is a module here with
``configure(parser)`` (its options) and ``run(args) -> int``; ``--out`` is added for all of
them. Only the chosen suite's module is imported, so ``mambaverse bench --help`` stays light.
To add a suite, add one line to :data:`SUITES`.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from types import ModuleType

from ..cli import Command
from ..errors import UnknownNameError, nearest

# suite -> (module with configure(parser) and run(args), one-line help)
SUITES: dict[str, tuple[str, str]] = {
    "kernels": (
        "mambaverse.bench.kernels",
        "each kernel op's implementations against its peers (time, bandwidth, FLOP/s)",
    ),
    "scaling": (
        "mambaverse.bench.scaling",
        "Mamba, Mamba-2, hybrid and matched Transformer LMs: training and generation vs length",
    ),
    "vision": (
        "mambaverse.bench.vision",
        "Vision Mamba presets vs DeiT of matched size: images/s and memory vs resolution",
    ),
    "generation": (
        "mambaverse.bench.generation",
        "Cobra-style VLM vs the same towers with a matched Transformer LM: tokens/s, memory",
    ),
    "synthetic": (
        "mambaverse.bench.synthetic",
        "selective copying and induction heads: accuracy at 1x..64x the training length",
    ),
}

DEFAULT_OUT = "bench_results"


def load_suite(name: str) -> ModuleType:
    """The suite's module (``configure``, ``run``)."""
    if name not in SUITES:
        close = nearest(name, SUITES)
        hint = f"did you mean {close[0]!r}?" if close else "choose one of " + ", ".join(SUITES)
        raise UnknownNameError(f"unknown benchmark suite {name!r}: {hint}")
    return importlib.import_module(SUITES[name][0])


def suite_parser(name: str) -> argparse.ArgumentParser:
    """The option parser of one suite: ``--out`` and the suite's own options."""
    suite = load_suite(name)
    parser = argparse.ArgumentParser(prog=f"mambaverse bench {name}", description=SUITES[name][1])
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder for {name}.json and {name}.png (default: {DEFAULT_OUT})",
    )
    suite.configure(parser)
    return parser


def _configure(parser: argparse.ArgumentParser) -> None:
    listing = "\n".join(f"  {name:<11} {text}" for name, (_, text) in SUITES.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        f"suites:\n{listing}\n\n'mambaverse bench SUITE --help' lists a suite's options."
    )
    parser.add_argument("suite", metavar="SUITE", help="one of: " + ", ".join(SUITES))
    # The suite parses the rest itself, so that only its module is imported.
    parser.add_argument("suite_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _run(args: argparse.Namespace) -> int:
    suite_args = suite_parser(args.suite).parse_args(args.suite_args)
    suite_args.command_line = shlex.join(["mambaverse", "bench", args.suite, *args.suite_args])
    return int(load_suite(args.suite).run(suite_args) or 0)


bench_command = Command(_configure, _run)
