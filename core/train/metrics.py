"""Metrics as JSON lines, and the loss / accuracy plot drawn from them at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


class MetricsLog:
    """Appends one JSON object per line to ``<output_dir>/metrics.jsonl`` (main process only).

    A fresh run starts the file empty; a resumed run keeps the lines that the checkpoint covers
    and drops any written after it by the interrupted run, so that no step appears twice: those
    up to its step, but a test line of that very step only if the checkpoint recorded it (an
    evaluation after the save, such as a run's final one, is made again).
    """

    def __init__(
        self,
        output_dir: Path,
        enabled: bool,
        resumed_at: int | None,
        evaluated_at: int | None = None,
    ) -> None:
        self.path = output_dir / METRICS_FILE
        self.enabled = enabled
        if not enabled:
            return
        kept = []
        if resumed_at is not None and self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _covered(json.loads(line), resumed_at, evaluated_at)
            ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _covered(record: dict[str, Any], step: int, evaluated_at: int | None) -> bool:
    """Whether a checkpoint at ``step`` whose latest evaluation was at ``evaluated_at`` covers
    the metrics line ``record``."""
    if record["step"] < step:
        return True
    if record["step"] > step:
        return False
    return record["split"] != "test" or evaluated_at == step


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_file: Path, out: Path) -> Path:
    """Loss (train and test) and test accuracy against the optimiser step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_file)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    loss_ax.plot([r["step"] for r in test], [r["loss"] for r in test], "o-", label="test")
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="loss")
    loss_ax.legend()
    acc_ax.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train")
    acc_ax.plot([r["step"] for r in test], [r["accuracy"] for r in test], "o-", label="test")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
