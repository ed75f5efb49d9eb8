"""The bidirectional scan of Vision Mamba (hustvl/Vim, ``bimamba_type="v2"``).

Vim's block runs one SSM over the row-major token sequence and a second one over the same
sequence flipped (``xz.flip([-1])``), flips the second output back and adds the two
(``out + out_b.flip([-1])``). 4×4 example (cells numbered row-major)::

     0  1  2  3     k=0: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
     4  5  6  7     k=1: 15 14 13 12 11 10 9 8 7 6 5 4 3 2 1 0
     8  9 10 11
    12 13 14 15

K = 2 and each walk visits every cell once: ``merge(flatten(x), H, W) == 2 * x``.
"""

from __future__ import annotations

import torch

from .walks import check_grid, flatten_along, merge_along, walks_on


def walks(height: int, width: int) -> torch.Tensor:
    """(2, H·W): row-major, then row-major reversed."""
    forward = torch.arange(height * width)
    return torch.stack([forward, forward.flip(0)])


def flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 2, H·W, C)."""
    check_grid(x, "bidirectional")
    return flatten_along(x, walks_on(walks, x.shape[1], x.shape[2], x.device))


def merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, H·W, C) -> (B, H, W, C): forward output + backward output flipped back."""
    return merge_along(y, walks_on(walks, height, width, y.device), height, width, "bidirectional")
