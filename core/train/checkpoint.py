"""Training checkpoints: the full accelerate state, committed atomically, verified before loading.

A checkpoint is ``<output_dir>/checkpoints/step-<N>/``: what ``Accelerator.save_state`` writes
(model, optimiser, registered scheduler, gradient scaler, every process's RNG states), plus
``trainer_state.json`` (step, epoch, batches of the epoch already consumed), the run's
``config.yaml``, and last ``manifest.json`` (size and SHA-256 of every other file).

Atomicity: ``write_atomically`` (``mambaverse.pretrained``) with a staging directory every
process knows in advance, the hidden ``.step-<N>.partial``: all processes write into it; once all
are done the main process writes the manifest and renames it into place. A crash mid-save
therefore leaves only a hidden directory that is never read, and the newest complete checkpoint
stays the last good one.
Older checkpoints are removed only after a newer one is committed.

Verification: a checkpoint without a manifest, with a missing file, or with a file whose size or
hash differs is refused with a one-line error naming the damage and the newest intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import broadcast_object_list

from ..errors import ConfigError
from ..pretrained import write_atomically

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
CONFIG_COPY = "config.yaml"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint that is missing, incomplete or damaged."""


@dataclass
class Progress:
    """Where a run is; saved in every checkpoint."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batches_done: int = 0  # micro-batches of that epoch already consumed, per process
    samples_seen: int = 0  # training samples over all processes
    train_seconds: float = 0.0  # wall time spent training (not evaluating) so far
    # The latest test record (as in metrics.jsonl): a run resumed from its last step reports it
    # instead of evaluating, and so writing, the same step's test line again.
    last_eval: dict[str, Any] | None = None
    # The training sums since the last log line (loss, hits, positions, samples; all processes)
    # and the seconds they took, so that the first log line after a resume is the same.
    window_sums: list[float] | None = None
    window_seconds: float = 0.0
    # False in checkpoints written before last_eval was recorded: there, a test line of the
    # checkpoint's step in metrics.jsonl is kept on resume, as it always was.
    records_last_eval: bool = False


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def committed(output_dir: str | Path) -> list[Path]:
    """Committed checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(directory)
    }
    (directory / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def damage(directory: Path) -> str | None:
    """Why ``directory`` is not an intact checkpoint (``None`` if it is)."""
    manifest = directory / MANIFEST
    if not directory.is_dir():
        return "it does not exist"
    if not manifest.is_file():
        return f"it has no {MANIFEST} (the save did not finish)"
    try:
        listed = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"its {MANIFEST} is not valid"
    for name, expected in listed.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return (
                f"{name} has {size} bytes, expected {expected['bytes']} (truncated or overwritten)"
            )
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256 in {MANIFEST} (corrupted)"
    return None


def _refusal(directory: Path, reason: str, output_dir: str | Path) -> CheckpointError:
    """Why ``directory`` cannot be resumed, and the newest intact checkpoint of the run's
    ``output_dir`` to resume instead (``directory`` may be a path outside it, or a typo)."""
    intact = [p for p in committed(output_dir) if p != directory and not damage(p)]
    way_out = (
        f"the newest intact checkpoint is {intact[-1]}: resume from it with --resume {intact[-1]}"
        if intact
        else (
            f"no intact checkpoint is in {checkpoint_dir(output_dir)}; to start again, delete that "
            "directory or choose another output_dir"
        )
    )
    if not directory.exists():
        return CheckpointError(f"checkpoint {directory} does not exist; {way_out}")
    return CheckpointError(f"checkpoint {directory} is damaged: {reason}; {way_out}")


def resolve(output_dir: str | Path, resume: str) -> Path:
    """The checkpoint ``--resume`` means: ``latest`` in ``output_dir``, or a path: a checkpoint
    (``step-N``), or a run's output directory or its ``checkpoints`` directory, whose newest
    checkpoint it means."""
    if resume != "latest":
        path = Path(resume)
        if path.is_dir() and path.name == CHECKPOINTS:
            return resolve(path.parent, "latest")
        if (path / CHECKPOINTS).is_dir():
            return resolve(path, "latest")
        return path
    found = committed(output_dir)
    if not found:
        raise CheckpointError(
            f"--resume: no checkpoint in {checkpoint_dir(output_dir)}; start without --resume, "
            "or set checkpoint.every_steps to save some"
        )
    return found[-1]


def read_progress(directory: Path, output_dir: str | Path) -> tuple[Progress, str]:
    """Verify ``directory`` (a checkpoint to resume in the run writing to ``output_dir``) and read
    its progress and config text."""
    reason = damage(directory)
    if reason is not None:
        raise _refusal(directory, reason, output_dir)
    state = json.loads((directory / TRAINER_STATE).read_text())
    return Progress(**state), (directory / CONFIG_COPY).read_text()


def save(
    accelerator: Any, output_dir: str | Path, progress: Progress, config_text: str, keep: int
) -> Path:
    """Save the full training state as checkpoint ``step-<N>`` (a collective call)."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{progress.step:08d}"
    # Saved at this step already (a stop signal right after a periodic save)? The main process
    # checks, so that only one process reads the files, and tells the others.
    already = [accelerator.is_main_process and final.exists() and damage(final) is None]
    broadcast_object_list(already)
    if already[0]:
        return final
    staging = root / f".step-{progress.step:08d}.partial"

    def write(folder: Path) -> None:
        accelerator.wait_for_everyone()  # the main process has made the folder
        accelerator.save_state(str(folder), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (folder / TRAINER_STATE).write_text(json.dumps(asdict(progress), indent=1))
            (folder / CONFIG_COPY).write_text(config_text)
            write_manifest(folder)

    if accelerator.is_main_process:
        if final.exists():  # a damaged copy (a resume went back past it): set it aside, unread
            os.replace(final, root / f".step-{progress.step:08d}.damaged-{time.time_ns()}")
        write_atomically(final, write, staging=staging)  # the commit
        for old in committed(output_dir)[:-keep]:
            shutil.rmtree(old)
    else:
        write(staging)
    accelerator.wait_for_everyone()
    return final


def load(accelerator: Any, directory: Path, output_dir: str | Path) -> Progress:
    """Restore the training state from a verified checkpoint (a collective call)."""
    progress, _ = read_progress(directory, output_dir)
    try:
        accelerator.load_state(str(directory))
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {directory} cannot be loaded into this run "
            f"({type(err).__name__}: {' '.join(str(err).split())}); "
            "was it saved with another model or optimiser config?"
        ) from None
    return progress
