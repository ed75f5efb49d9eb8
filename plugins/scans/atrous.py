"""The atrous (skip-sampling) scan of EfficientVMamba's ES2D (TerryPei/EfficientVMamba,
``EfficientScan`` / ``EfficientMerge`` in classification/lib/models/mamba/efficient_scan.py).

The grid is zero-padded at the bottom and right to a multiple of the step p, and four sub-grids,
taken with stride p at row/column offsets (0, 0), (1, 0), (0, 1), (1, 1), are walked as
four sequences, alternately row-major and column-major::

    k=0: x[0::p, 0::p] row-major          k=2: x[0::p, 1::p] row-major
    k=1: x[1::p, 0::p] column-major       k=3: x[1::p, 1::p] column-major

4×4 example with p = 2 (cells numbered row-major)::

     0  1  2  3     k=0: 0 2 8 10
     4  5  6  7     k=1: 4 12 6 14
     8  9 10 11     k=2: 1 3 9 11
    12 13 14 15     k=3: 5 13 7 15

Each sequence has L = ceil(H/p)·ceil(W/p) steps; steps on padding cells read zeros and their
outputs are dropped. Coverage, as in the official code: K = 4 whatever the step, and a cell
(h, w) is visited once if h mod p < 2 and w mod p < 2, never otherwise. So

    merge(flatten(x, step=p), H, W, step=p) == m_p * x,   m_p[h, w] = [h mod p < 2 and w mod p < 2]

which for the published step p = 2 is ``x`` itself (every cell visited exactly once). For p > 2
the official merge leaves the unvisited cells uninitialised (``new_empty``); here they are 0.
"""

from __future__ import annotations

import torch

from mambaverse.errors import ConfigError

from .walks import check_grid, flatten_along, merge_along, walks_on

DEFAULT_STEP = 2


def walks(height: int, width: int, step: int = DEFAULT_STEP) -> torch.Tensor:
    """(4, ceil(H/p)·ceil(W/p)): the four sub-grid walks; H·W marks a padding cell."""
    if not isinstance(step, int) or step < 2:
        raise ConfigError(
            f"atrous scan: step must be an integer >= 2 (the sub-grid stride), got {step!r}"
        )
    padded_h, padded_w = -(-height // step) * step, -(-width // step) * step
    grid = torch.full((padded_h, padded_w), height * width)
    grid[:height, :width] = torch.arange(height * width).view(height, width)
    return torch.stack(
        [
            grid[0::step, 0::step].flatten(),
            grid[1::step, 0::step].t().flatten(),
            grid[0::step, 1::step].flatten(),
            grid[1::step, 1::step].t().flatten(),
        ]
    )


def flatten(x: torch.Tensor, step: int = DEFAULT_STEP) -> torch.Tensor:
    """(B, H, W, C) -> (B, 4, ceil(H/p)·ceil(W/p), C)."""
    check_grid(x, "atrous")
    return flatten_along(x, walks_on(walks, x.shape[1], x.shape[2], x.device, (("step", step),)))


def merge(y: torch.Tensor, height: int, width: int, step: int = DEFAULT_STEP) -> torch.Tensor:
    """(B, 4, L, C) -> (B, H, W, C): each sub-grid's outputs scattered back onto its cells."""
    walked = walks_on(walks, height, width, y.device, (("step", step),))
    return merge_along(y, walked, height, width, "atrous")
