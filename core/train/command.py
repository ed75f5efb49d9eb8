"""``mambaverse train``: the command-line face of :func:`mambaverse.train.train`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

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
        help="continue from the newest checkpoint in output_dir, or from PATH (a checkpoint, or "
        "a run's output_dir or checkpoints directory: its newest)",
    )


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .config import config_source, load_config
    from .loop import train

    words = [w for w in (args.config, *args.overrides) if w is not None]
    resume = args.resume
    if resume is not None and resume != "latest" and _not_a_path(resume):
        # `--resume CONFIG.yaml ...`: argparse gave --resume the next argument; it was meant bare.
        argv = getattr(args, "_argv", [])
        words = sorted([*words, resume], key=lambda w: argv.index(w) if w in argv else len(argv))
        resume = "latest"
    files = [w for w in words if not _OVERRIDE.match(w)]
    if len(files) > 1:
        raise ConfigError(
            f"two config files, {files[0]} and {files[1]}; give one (and key=value overrides)"
        )
    config_file = files[0] if files else None
    overrides = [w for w in words if _OVERRIDE.match(w)]
    config = load_config(config_file, overrides)
    summary = train(config, resume=resume, source=config_source(config_file, overrides))
    return 128 + summary["signal"] if "interrupted" in summary else 0


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key=value, key a dotted name


def _not_a_path(value: str) -> bool:
    """Whether ``--resume``'s value is a config file or an override rather than a checkpoint
    (a directory that exists is a path, even ``runs/lr=0.001``)."""
    if value.endswith((".yaml", ".yml")):
        return True
    return not Path(value).is_dir() and bool(_OVERRIDE.match(value))


train_command = Command(_configure, _run)
