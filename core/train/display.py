"""What a run shows: a progress bar on stderr and result lines on stdout, from the main process only."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Display:
    def __init__(self, enabled: bool, total_steps: int, done_steps: int) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None
        if not enabled:
            return
        self.bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=not sys.stderr.isatty(),  # no frozen bar text in logs and pipes
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=done_steps, stats="")
        self.bar.start()

    def step(self, completed: int, stats: str | None = None) -> None:
        if self.bar is not None:
            fields = {} if stats is None else {"stats": stats}
            self.bar.update(self.task, completed=completed, **fields)

    def line(self, text: str) -> None:
        """A result line on stdout (rich draws it above a live bar)."""
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
