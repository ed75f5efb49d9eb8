"""Tiny models with the calling conventions of each task, and hooks the tests use to watch them.

Environment hooks (read at every training forward):
- ``TOY_RECORD_DIR``: append a fingerprint of every training sample to ``<dir>/rank<RANK>.txt``.
- ``TOY_SIGNAL_AT``: send ``TOY_SIGNAL`` (default SIGTERM) to this process at that training
  forward call (1-based).
- ``TOY_STEP_SECONDS``: sleep that long per training forward (to give a test time to signal).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn


def fingerprint(sample: torch.Tensor) -> str:
    return hashlib.sha1(sample.detach().cpu().float().numpy().tobytes()).hexdigest()


class Watched(nn.Module):
    """Runs the environment hooks above on each training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def watch(self, samples: torch.Tensor) -> None:
        if not self.training:
            return
        self.calls += 1
        record_dir = os.environ.get("TOY_RECORD_DIR")
        if record_dir:
            rank = os.environ.get("RANK", "0")
            with (Path(record_dir) / f"rank{rank}.txt").open("a") as f:
                f.writelines(fingerprint(sample) + "\n" for sample in samples)
        if int(os.environ.get("TOY_SIGNAL_AT", "0")) == self.calls:
            os.kill(os.getpid(), signal.Signals[os.environ.get("TOY_SIGNAL", "SIGTERM")])
        time.sleep(float(os.environ.get("TOY_STEP_SECONDS", "0")))


class ToyClassifier(Watched):
    """images (B, C, S, S) -> logits (B, classes): an MLP with dropout and a weight-decay-free scale."""

    def __init__(
        self, num_classes: int = 10, img_size: int = 8, in_chans: int = 1, dim: int = 64,
        dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_chans * img_size**2, dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.gain = nn.Parameter(torch.ones(1, dim) * 1.5)  # 2-D, exempt only by no_weight_decay
        self.head = nn.Linear(dim, num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"gain"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.watch(images)
        return self.head(self.body(images) * self.gain)


def causal_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, L, D): position t holds the mean of x[:, : t + 1]."""
    steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :, None]
    return x.cumsum(1) / steps


class ToyLM(Watched):
    """input_ids (B, L) -> logits (B, L, V): each position sees itself and the mean of its past."""

    def __init__(self, vocab_size: int = 16, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, vocab_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.watch(input_ids)
        h = self.embed(input_ids)
        return self.mix(torch.cat([h, causal_mean(h)], dim=-1))


class ToyCaptioner(Watched):
    """images (B, C, S, S), input_ids (B, L) -> logits (B, L, V): an image prefix vector added to
    every token's causal features."""

    def __init__(
        self, vocab_size: int = 257, img_size: int = 8, in_chans: int = 3, dim: int = 32
    ) -> None:
        super().__init__()
        self.vision = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size**2, dim))
        self.embed = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(2 * dim, vocab_size)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        self.watch(input_ids)
        h = self.embed(input_ids) + self.vision(images)[:, None, :]
        return self.head(torch.cat([h, causal_mean(h)], dim=-1))
