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

from mambaverse.errors import ConfigError


def load_image(path: str | Path, where: str = "") -> Any:
    """The image at ``path`` as a PIL image, fully read; errors say which file (and ``where``)."""
    from PIL import Image, UnidentifiedImageError

    prefix = f"{where}: " if where else ""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{prefix}image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(f"{prefix}image {str(path)!r} cannot be read ({err})") from None


def to_pixels(image: Any, size: int) -> torch.Tensor:
    """A PIL image -> (3, size, size) float32 in [0, 1], bilinear resize."""
    from PIL import Image

    resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # (size, size, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def as_pixels(images: Any, size: int) -> torch.Tensor:
    """A batch for the model: a tensor (B, 3, H, W) in [0, 1] as is, or a sequence of PIL images
    or paths -> (B, 3, size, size)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected images (batch, 3, height, width) in [0, 1], got {tuple(images.shape)}"
            )
        return images
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        images = [images]
    pictures = [load_image(i) if isinstance(i, (str, Path)) else i for i in images]
    return torch.stack([to_pixels(p, size) for p in pictures])
