"""AdamW with the usual weight-decay exemptions, freezing by name, and the warm-up + cosine schedule."""

from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from ..errors import ConfigError
from .config import OptimSection, ScheduleSection


def freeze(model: nn.Module, patterns: list[str]) -> int:
    """Stop training parameters whose names match any fnmatch pattern; returns how many tensors."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            sample = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ConfigError(
                f"freeze: pattern {pattern!r} matches no parameter; names look like: {sample}"
            )
    frozen = 0
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def skips_weight_decay(name: str, param: nn.Parameter, listed: set[str]) -> bool:
    """timm's rule (1-D tensors: biases, norms, scales; and the model's ``no_weight_decay()``
    names or patterns) plus the Mamba reference's ``_no_weight_decay`` mark (A_log, D)."""
    return (
        param.ndim <= 1
        or name.endswith(".bias")
        or getattr(param, "_no_weight_decay", False)
        or any(fnmatch.fnmatchcase(name, pattern) for pattern in listed)
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: with and without weight decay."""
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if skips_weight_decay(name, param, listed) else decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("freeze: every parameter is frozen; nothing is left to train")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay), lr=optim.lr, betas=optim.betas, eps=optim.eps
    )


def lr_factor(step: int, total_steps: int, schedule: ScheduleSection) -> float:
    """lr at optimiser step ``step`` (0-based) as a fraction of the peak lr.

    warm-up (step < W):  (step + 1) / W
    then cosine:         m + (1 - m) · ½ (1 + cos(π · p)),  p = (step - W) / (total - W)
    with m = ``min_lr_ratio``; ``constant`` keeps 1 after the warm-up.
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    m = schedule.min_lr_ratio
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: ScheduleSection
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule)
    )
