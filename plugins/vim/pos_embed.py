"""Vim's absolute position embeddings at another resolution.

The embedding is (1, N + 1, C) for an h×w patch grid with the class token's row in the middle
(index N // 2), as in hustvl/Vim. For an H×W grid the patch rows are resized as an image
(bicubic, like timm's ``resample_abs_pos_embed``) and the class row is put in the middle again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """(1, h·w + 1, C) -> (1, H·W + 1, C); unchanged when the grids are equal."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    (h, w), (H, W) = old_grid, new_grid
    middle, new_middle = (h * w) // 2, (H * W) // 2
    cls = pos_embed[:, middle : middle + 1]
    cells = torch.cat([pos_embed[:, :middle], pos_embed[:, middle + 1 :]], dim=1)
    image = cells.reshape(1, h, w, -1).permute(0, 3, 1, 2).float()  # (1, C, h, w)
    image = F.interpolate(image, size=(H, W), mode="bicubic", align_corners=False)
    cells = image.permute(0, 2, 3, 1).reshape(1, H * W, -1).to(pos_embed.dtype)
    return torch.cat([cells[:, :new_middle], cls, cells[:, new_middle:]], dim=1)
