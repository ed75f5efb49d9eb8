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
        help="continue from the newest checkpoint in output_dir, or from PATH (a checkpoint, or "
        "a run's output_dir or checkpoints directory: its newest)",
    )


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .config import config_source, load_config
    from .loop import train

    config_file, overrides = args.config, list(args.overrides)
    resume = args.resume
    if resume is not None and resume != "latest" and _not_a_path(resume):
        # `--resume CONFIG.yaml ...`: argparse gave --resume the next argument; it was meant bare.
        if "=" in resume:
            overrides = [resume, *overrides]
        elif config_file is None or "=" in config_file:
            overrides = [config_file, *overrides] if config_file else overrides
            config_file = resume
        else:
            raise ConfigError(
                f"--resume {resume}: that is a config file, and {config_file} is the config; "
                "--resume takes a checkpoint, a run's output_dir, or nothing (the newest in "
                "output_dir)"
            )
        resume = "latest"
    if config_file is not None and "=" in config_file:  # only overrides were given
        config_file, overrides = None, [config_file, *overrides]
    config = load_config(config_file, overrides)
    summary = train(config, resume=resume, source=config_source(config_file, overrides))
    return 128 + summary["signal"] if "interrupted" in summary else 0


def _not_a_path(value: str) -> bool:
    """Whether ``--resume``'s value is a config file or an override rather than a checkpoint."""
    return "=" in value or value.endswith((".yaml", ".yml"))


train_command = Command(_configure, _run)
