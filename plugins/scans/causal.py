"""The causal scan: one row-major walk, the order of a plain (1-D) Mamba over image patches.

4×4 example (cells numbered row-major)::

     0  1  2  3
     4  5  6  7     k=0: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
     8  9 10 11
    12 13 14 15

K = 1 and every cell is visited once: ``merge(flatten(x), H, W) == x``.
"""

from __future__ import annotations

import torch

from .walks import check_grid, flatten_along, merge_along, walks_on


def walks(height: int, width: int) -> torch.Tensor:
    """(1, H·W): the row-major order, ``x.flatten(1, 2)``."""
    return torch.arange(height * width).view(1, -1)


def flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 1, H·W, C)."""
    check_grid(x, "causal")
    return flatten_along(x, walks_on(walks, x.shape[1], x.shape[2], x.device))


def merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H·W, C) -> (B, H, W, C)."""
    return merge_along(y, walks_on(walks, height, width, y.device), height, width, "causal")
