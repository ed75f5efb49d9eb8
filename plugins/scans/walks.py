"""A scan as K walks over the cells of a grid, and the gathers that follow them.

Cells are numbered row-major, ``cell = h * W + w``. A scan's *walks* are a ``(K, L)`` integer
tensor: sequence k visits cells ``walks[k, 0], walks[k, 1], ...``. The index ``H * W`` names a
padding cell that reads as zero and whose outputs are dropped (the atrous scan pads the grid to a
multiple of its step). Then

    flatten: seq[b, k, t, c]  = x[b, walks[k, t], c]                      (B, H, W, C) -> (B, K, L, C)
    merge:   out[b, cell, c]  = sum_k sum_{t : walks[k, t] = cell} y[b, k, t, c]

so ``merge(flatten(x)) = coverage * x`` with ``coverage[cell]`` = how many (k, t) visit the cell.
The merge is a sum over k of one gather per sequence (each walk visits a cell at most once),
which keeps it deterministic: no scatter, no atomic adds on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

WalksFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Walks:
    order: torch.Tensor  # (K, L): cell visited by walk k at step t (H·W = padding)
    inverse: torch.Tensor  # (K, H·W): step at which walk k visits the cell (L = never)
    padded: bool  # whether any walk steps on the padding cell


@lru_cache(maxsize=256)
def walks_on(
    walks: WalksFn, height: int, width: int, device: torch.device, options: tuple = ()
) -> Walks:
    """``walks(height, width, **dict(options))`` on ``device``, with its inverse (cached)."""
    # The cache outlives the call: build ordinary tensors even when the first call comes from
    # inside torch.inference_mode(), or later training steps could not save them for backward.
    with torch.inference_mode(False):
        order = walks(height, width, **dict(options))  # (K, L), on the CPU
        K, L = order.shape
        cells = height * width
        inverse = torch.full((K, cells + 1), L, dtype=torch.long)
        inverse.scatter_(1, order, torch.arange(L).expand(K, L))
        padded = bool((order == cells).any())
        return Walks(order.to(device), inverse[:, :cells].to(device), padded)


def check_grid(x: torch.Tensor, scan: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{scan} scan: expected a grid (batch, height, width, channels), got shape {tuple(x.shape)}"
        )


def flatten_along(x: torch.Tensor, walks: Walks) -> torch.Tensor:
    """x (B, H, W, C) -> (B, K, L, C): the cells each walk visits, in order."""
    B, H, W, C = x.shape
    cells = x.reshape(B, H * W, C)
    if walks.padded:
        cells = torch.cat([cells, cells.new_zeros(B, 1, C)], dim=1)  # the padding cell
    return cells[:, walks.order]


def merge_along(y: torch.Tensor, walks: Walks, height: int, width: int, scan: str) -> torch.Tensor:
    """y (B, K, L, C) -> (B, H, W, C): each cell summed over the walks that visit it."""
    K, L = walks.order.shape
    if y.dim() != 4 or tuple(y.shape[1:3]) != (K, L):
        raise ValueError(
            f"{scan} scan: expected sequences (batch, {K}, {L}, channels) for a "
            f"{height}×{width} grid, got shape {tuple(y.shape)}"
        )
    B, C = y.shape[0], y.shape[3]
    padded = torch.cat([y, y.new_zeros(B, K, 1, C)], dim=2)  # step L reads as zero
    out = padded[:, 0, walks.inverse[0]]
    for k in range(1, K):
        out = out + padded[:, k, walks.inverse[k]]
    return out.reshape(B, height, width, C)
