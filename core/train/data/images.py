"""Image datasets: scikit-learn's digits (the offline default), an image folder, image–caption pairs.

All are deterministic (no random augmentation), so that a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from ...errors import ConfigError
from .base import IGNORE_INDEX, DatasetOptions, Splits, TensorItems

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_indices(
    count: int, test_fraction: float, seed: int, stratify: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/test split of ``range(count)``, stratified by ``stratify`` if given."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            np.arange(count), test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as err:  # too few samples (or of a class) for this split
        raise ConfigError(
            f"data: {count} sample(s) cannot be split into train and test with test_fraction "
            f"{test_fraction} ({err}); give more samples or change data.test_fraction"
        ) from None


# -- digits -------------------------------------------------------------------------------------
class DigitsOptions(DatasetOptions):
    """scikit-learn's 1,797 handwritten digits (8×8, 10 classes), bundled with the library."""

    img_size: int = Field(32, ge=8, description="side the 8×8 images are resized to (bilinear)")
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0


def build_digits(options: DigitsOptions) -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = split_indices(len(labels), options.test_fraction, options.split_seed, labels)
    # Normalise with the training split's statistics only: x <- (x - mean) / std.
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    if options.img_size != 8:
        images = F.interpolate(images, size=options.img_size, mode="bilinear", align_corners=False)
    images = images.expand(-1, options.channels, -1, -1).contiguous()  # (N, C, S, S)
    return Splits(
        train=TensorItems({"images": images[train], "labels": labels[train]}),
        test=TensorItems({"images": images[test], "labels": labels[test]}),
        model_defaults={
            "num_classes": 10,
            "img_size": options.img_size,
            "in_chans": options.channels,
        },
    )


# -- files on disk ------------------------------------------------------------------------------
class ImageFileOptions(DatasetOptions):
    path: str
    img_size: int = Field(224, ge=1)
    channels: Literal[1, 3] = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    test_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0

    @model_validator(mode="after")
    def _one_statistic_per_channel(self) -> ImageFileOptions:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, 3) or len(values) < self.channels:
                raise ValueError(
                    f"data.{name} has {len(values)} value(s) for {self.channels} channel(s); "
                    f"give one per channel (3 for RGB, the first is used for channels=1)"
                )
        return self


def image_transform(options: ImageFileOptions) -> Any:
    """Resize the short side, centre-crop to a square, normalise: an RGB PIL image -> (C, S, S)."""
    from torchvision import transforms

    mean, std = options.mean, options.std
    gray = [transforms.Grayscale(1)] if options.channels == 1 else []
    if options.channels == 1:
        mean, std = mean[:1], std[:1]
    return transforms.Compose(
        [
            *gray,
            transforms.Resize(options.img_size),
            transforms.CenterCrop(options.img_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def existing_dir(path: str, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"data.path: {what} {str(directory)!r} does not exist")
    return directory


class ImageFolderOptions(ImageFileOptions):
    """torchvision's layout: ``path/<class>/<image>``, or ``path/train/<class>/...`` plus
    ``path/test/`` (or ``path/val/``); without those, ``test_fraction`` of each class is held out."""


class LabelledImages(Dataset):
    def __init__(self, folder: Any) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.folder[index]
        return {"images": image, "labels": torch.tensor(label)}


class VisibleClassFolders(ImageFolder):
    """torchvision's ImageFolder without hidden folders (.ipynb_checkpoints) as classes."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes, _ = super().find_classes(directory)
        visible = [name for name in classes if not name.startswith(".")]
        return visible, {name: i for i, name in enumerate(visible)}


def open_rgb(path: str | Path, where: str = "") -> Any:
    """The image at ``path`` as an 8-bit RGB PIL image, fully read. 16-bit images (``I;16``
    PNGs, 32-bit ``I``) are scaled to 8 bits, where PIL's own conversion would clip them to
    white. Errors name the file (and ``where``)."""
    from PIL import Image, UnidentifiedImageError

    prefix = f"{where}: " if where else ""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{prefix}image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I"):  # 16 or 32-bit integers: 0-65535 -> 0-255
                wide = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8))
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(
            f"{prefix}image {str(path)!r} cannot be read ({err}); remove or replace the file"
        ) from None


def _image_folder(path: Path, transform: Any) -> Any:
    try:
        folder = VisibleClassFolders(str(path), transform=transform, loader=open_rgb)
    except FileNotFoundError as err:  # no class folders, or a class without images
        raise ConfigError(
            f"data.path: {path}: {err} (expected <class>/<image> folders, e.g. {path}/cat/1.png)"
        ) from None
    if len(folder.classes) < 2:
        raise ConfigError(
            f"data.path: {path} has {len(folder.classes)} class folder(s) "
            f"({', '.join(folder.classes) or 'none'}); a classifier needs at least 2: "
            f"<class>/<image> folders, e.g. {path}/cat/1.png and {path}/dog/1.png"
        )
    return folder


def build_image_folder(options: ImageFolderOptions) -> Splits:
    root = existing_dir(options.path, "image folder")
    transform = image_transform(options)
    held_out = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train = _image_folder(root / "train", transform)
        test = _image_folder(held_out, transform)
        if train.classes != test.classes:
            raise ConfigError(
                f"data.path: {root}/train and {held_out} have different class folders"
            )
        classes = train.classes
    else:
        # train/ alone (no class folder beside it): its classes, test_fraction of each held out
        beside = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        only_train = [p.name for p in beside] == ["train"]
        everything = _image_folder(root / "train" if only_train else root, transform)
        train_idx, test_idx = split_indices(
            len(everything), options.test_fraction, options.split_seed, everything.targets
        )
        train, test = Subset(everything, train_idx), Subset(everything, test_idx)
        classes = everything.classes
    return Splits(
        train=LabelledImages(train),
        test=LabelledImages(test),
        model_defaults={
            "num_classes": len(classes),
            "img_size": options.img_size,
            "in_chans": options.channels,
        },
    )


# -- image–caption pairs ------------------------------------------------------------------------
END_OF_TEXT = 256  # byte-level vocabulary: the 256 byte values, then this marker
BYTE_VOCAB_SIZE = 257


def encode_caption(text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of ``text`` as next-token pairs, padded to ``max_length``.

    input_ids = [EOT, b0, b1, ..., bn-1, EOT, EOT, ...]
    labels    = [b0,  b1, ...,  bn-1, EOT, -100, -100, ...]
    """
    tokens = [*text.encode("utf-8")[: max_length - 1], END_OF_TEXT]
    input_ids = torch.full((max_length,), END_OF_TEXT, dtype=torch.long)
    labels = torch.full((max_length,), IGNORE_INDEX, dtype=torch.long)
    input_ids[1 : len(tokens)] = torch.tensor(tokens[:-1], dtype=torch.long)
    labels[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return input_ids, labels


class CaptionOptions(ImageFileOptions):
    """JSON lines ``{"image": "<path relative to the file>", "caption": "..."}``, captions
    tokenised by bytes (vocabulary 257). ``test_path``: a second such file for the test split;
    without it ``test_fraction`` of the pairs is held out."""

    test_path: str | None = None
    max_length: int = Field(64, ge=2, description="caption tokens per sample, with end-of-text")


def read_caption_lines(path: Path) -> list[tuple[Path, str]]:
    if not path.is_file():
        raise ConfigError(f"data: caption file {str(path)!r} does not exist")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record["caption"], str):
                raise TypeError(f"caption is {type(record['caption']).__name__}, not text")
            pairs.append((path.parent / record["image"], record["caption"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(
                f'{path}:{number}: expected {{"image": ..., "caption": ...}} ({type(err).__name__}: {err})'
            ) from None
    if not pairs:
        raise ConfigError(f"{path}: no image–caption pairs")
    return pairs


class CaptionedImages(Dataset):
    def __init__(self, pairs: list[tuple[Path, str]], transform: Any, max_length: int) -> None:
        self.pairs, self.transform, self.max_length = pairs, transform, max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, caption = self.pairs[index]
        pixels = self.transform(open_rgb(image_path))
        input_ids, labels = encode_caption(caption, self.max_length)
        return {"images": pixels, "input_ids": input_ids, "labels": labels}


def build_captions(options: CaptionOptions) -> Splits:
    transform = image_transform(options)
    pairs = read_caption_lines(Path(options.path).expanduser())
    if options.test_path is not None:
        train_pairs, test_pairs = pairs, read_caption_lines(Path(options.test_path).expanduser())
    else:
        train_idx, test_idx = split_indices(len(pairs), options.test_fraction, options.split_seed)
        train_pairs, test_pairs = [pairs[i] for i in train_idx], [pairs[i] for i in test_idx]
    return Splits(
        train=CaptionedImages(train_pairs, transform, options.max_length),
        test=CaptionedImages(test_pairs, transform, options.max_length),
        model_defaults={
            "vocab_size": BYTE_VOCAB_SIZE,
            "img_size": options.img_size,
            "in_chans": options.channels,
        },
    )
