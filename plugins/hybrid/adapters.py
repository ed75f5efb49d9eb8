"""Per-invocation low-rank adapters on a shared linear layer (Zamba2, Glorioso et al. 2024).

Zamba2 re-applies one transformer block at several depths; to let each application specialise a
little, the i-th application adds its own rank-r correction to some of the block's projections:

    y = W x + U_i (D_i x)          W: (out, in) shared;  D_i: (r, in), U_i: (out, r) of use i

(formally LoRA, but trained with the base model). :class:`AdaptedLinear` wraps the shared
``nn.Linear``; the block selects which adapter is active (``active = i``) around each use, so the
wrapped module can stay inside an unmodified layer such as the attention mixer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def low_rank(in_features: int, rank: int, out_features: int) -> nn.Sequential:
    """x -> U (D x): Linear(in, rank) then Linear(rank, out), no biases."""
    return nn.Sequential(
        nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=False)
    )


class AdaptedLinear(nn.Module):
    """``base(x) + adapters[active](x)``; with ``active = None`` just ``base(x)``.

    base: the shared projection. adapters: one low-rank module per use of the enclosing block.
    """

    def __init__(self, base: nn.Linear, adapters: Sequence[nn.Module]) -> None:
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleList(adapters)
        self.active: int | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The shared weight (callers read its dtype and device)."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.active is None else y + self.adapters[self.active](x)


def adapt(module: nn.Module, name: str, adapters: Sequence[nn.Module]) -> None:
    """Replace ``module.<name>`` (an nn.Linear) by an :class:`AdaptedLinear` around it."""
    setattr(module, name, AdaptedLinear(getattr(module, name), adapters))


@contextmanager
def active_adapter(module: nn.Module, index: int) -> Iterator[None]:
    """Within the block, every AdaptedLinear of ``module`` uses its adapter ``index``."""
    adapted = [m for m in module.modules() if isinstance(m, AdaptedLinear)]
    for m in adapted:
        m.active = index
    try:
        yield
    finally:
        for m in adapted:
            m.active = None
