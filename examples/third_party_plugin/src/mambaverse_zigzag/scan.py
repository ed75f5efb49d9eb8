"""The zig-zag (boustrophedon) scan: row 0 left-to-right, row 1 right-to-left, and so on.

On a 3x3 grid numbered row-major, the sequence is 0 1 2 5 4 3 6 7 8.
"""

import torch


def _flip_odd_rows(x: torch.Tensor) -> torch.Tensor:
    # x: (B, H, W, C); reversing W on odd rows is its own inverse.
    out = x.clone()
    out[:, 1::2] = x[:, 1::2].flip(2)
    return out


def flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, 1, H*W, C)."""
    b, h, w, c = x.shape
    return _flip_odd_rows(x).reshape(b, 1, h * w, c)


def merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 1, H*W, C) -> (B, H, W, C)."""
    b, k, length, c = y.shape
    if k != 1 or length != h * w:
        raise ValueError(f"zigzag merge: expected (B, 1, {h * w}, C), got {tuple(y.shape)}")
    return _flip_odd_rows(y.reshape(b, h, w, c))
