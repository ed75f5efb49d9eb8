"""The cross scan of VMamba's SS2D (MzeroMiko/VMamba, ``cross_scan_fwd`` / ``cross_merge_fwd``).

Four walks: row-major, column-major (``x.transpose(H, W).flatten()``), and both reversed
(``torch.flip(..., dims=[-1])``); the merge flips the last two back, transposes the column-major
ones back and adds all four. 4×4 example (cells numbered row-major)::

     0  1  2  3     k=0: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
     4  5  6  7     k=1: 0 4 8 12 1 5 9 13 2 6 10 14 3 7 11 15
     8  9 10 11     k=2: 15 14 13 12 11 10 9 8 7 6 5 4 3 2 1 0
    12 13 14 15     k=3: 15 11 7 3 14 10 6 2 13 9 5 1 12 8 4 0

K = 4 and each walk visits every cell once: ``merge(flatten(x), H, W) == 4 * x``.
"""

from __future__ import annotations

import torch

from .walks import check_grid, flatten_along, merge_along, walks_on


def walks(height: int, width: int) -> torch.Tensor:
    """(4, H·W): row-major, column-major, and the two reversed."""
    grid = torch.arange(height * width).view(height, width)
    rows, columns = grid.flatten(), grid.t().flatten()
    return torch.stack([rows, columns, rows.flip(0), columns.flip(0)])


def flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 4, H·W, C)."""
    check_grid(x, "cross2d")
    return flatten_along(x, walks_on(walks, x.shape[1], x.shape[2], x.device))


def merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, H·W, C) -> (B, H, W, C): the sum of the four walks' outputs, each put back."""
    return merge_along(y, walks_on(walks, height, width, y.device), height, width, "cross2d")
