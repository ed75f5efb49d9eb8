"""``mambaverse train``: the command-line face of :func:`mambaverse.train.train`."""

from __future__ import annotations

import argparse

from ..cli import Command


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG.yaml",
        help="YAML config (default: a small Vision Mamba on scikit-learn's digits)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. optim.lr=1e-3 model.depth=4 precision=bf16",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH",
        help="continue from the newest checkpoint in output_dir, or from PATH",
    )


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import train

    config_file, overrides = args.config, list(args.overrides)
    if config_file is not None and "=" in config_file:  # only overrides were given
        config_file, overrides = None, [config_file, *overrides]
    config = load_config(config_file, overrides)
    source = config_file or "defaults"
    summary = train(config, resume=args.resume, source=source)
    return 128 + summary["signal"] if "interrupted" in summary else 0


train_command = Command(_configure, _run)
