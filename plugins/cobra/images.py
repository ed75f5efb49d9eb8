"""Images in, pixels out: every path into the model (training rows, the digits, ``caption``) goes
through :func:`to_pixels`, so an image file and the same image in a dataset give equal inputs.

Pixels are (3, S, S) float32 in [0, 1]: the image converted to RGB and resized to S×S without
keeping the aspect ratio (Cobra's "resize-naive"); each vision tower then applies its own
normalisation (and resizing, if its side differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mambaverse.train.data.images import open_rgb

# Training rows, the digits and ``caption`` read files the way image datasets do (one reader:
# errors name the file, 16-bit images are scaled to 8 bits).
load_image = open_rgb


def to_pixels(image: Any, size: int) -> torch.Tensor:
    """A PIL image -> (3, size, size) float32 in [0, 1], bilinear resize."""
    from PIL import Image

    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (size, size, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def as_pixels(images: Any, size: int) -> torch.Tensor:
    """A batch for the model: a tensor (B, 3, H, W) or (3, H, W), float in [0, 1] as is or
    uint8 in [0, 255] scaled (as ``torchvision.io.read_image`` gives), or a sequence of PIL
    images, paths or such tensors -> (B, 3, size, size)."""
    if isinstance(images, torch.Tensor):
        return _tensor_pixels(images)
    if isinstance(images, np.ndarray):
        raise ValueError(
            f"images: a numpy array {images.shape}; give torch.from_numpy(array) laid out "
            "(batch, 3, height, width) (.permute(0, 3, 1, 2) for (batch, height, width, 3)), "
            "PIL images or paths"
        )
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        images = [images]
    if len(images) == 0:
        raise ValueError("images: none were given; give at least one image")
    if all(isinstance(i, torch.Tensor) for i in images):
        return torch.cat([_tensor_pixels(i) for i in _same_sizes(images)])
    pictures = [load_image(i) if isinstance(i, (str, Path)) else i for i in images]
    odd = [type(p).__name__ for p in pictures if not hasattr(p, "convert")]
    if odd:
        raise ValueError(
            f"images: {', '.join(sorted(set(odd)))} among them; give one kind: a tensor batch, "
            "tensors, PIL images or paths"
        )
    return torch.stack([to_pixels(p, size) for p in pictures])


def _same_sizes(images: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    sizes = sorted({tuple(i.shape[-2:]) for i in images})
    if len(sizes) > 1:
        raise ValueError(
            f"images: tensors of sizes {sizes} cannot form one batch; resize them to one size, "
            "or give PIL images or paths (resized by the model)"
        )
    return images


def _tensor_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float pixels in [0, 1] from a float or uint8 tensor, (3, H, W) or batched."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"expected images (batch >= 1, 3, height, width) in [0, 1], got "
            f"{tuple(images.shape)}"
            + (
                " (channels last: .permute(0, 3, 1, 2))"
                if images.dim() == 4 and images.shape[-1] == 3
                else ""
            )
        )
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(
            f"images: {images.dtype} pixels; give floats in [0, 1] or uint8 in [0, 255]"
        )
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"images: pixel values from {low:.3g} to {high:.3g}, expected [0, 1] (each tower "
            "normalises them itself): divide 0-255 values by 255, or undo a normalisation"
        )
    return images
