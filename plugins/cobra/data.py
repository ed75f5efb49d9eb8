"""Datasets for the vision-language models (task ``vlm``) of ``mambaverse train``.

Items are ``{"images": (3, S, S) in [0, 1], "prompt": str, "answer": str}``: text, not ids, so
that the model being trained tokenises it with its own tokenizer and prompt template (the vlm
task calls ``model.encode``), and the loss falls on the answer only.

- ``vlm_digits`` (the offline default): scikit-learn's 1,797 handwritten digits, each as a caption
  ("Describe the image." -> "a handwritten digit seven") and a question ("What digit is this?" ->
  "seven"); a fixed stratified split holds out ``test_fraction`` of the images.
- ``vlm_jsonl``: JSON lines, one row per image, ``{"image": path, "caption": text}`` or
  ``{"image": path, "prompt": text, "answer": text}``; paths are relative to the file. Every row is
  checked before training starts: a missing or unreadable image is an error naming the file and
  line, or, with ``skip_bad_rows: true``, the row is left out and counted in a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mambaverse.errors import ConfigError
from mambaverse.train.data.base import DatasetOptions, Splits

from .images import load_image, to_pixels
from .templates import CAPTION_PROMPT

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_QUESTION = "What digit is this?"


@dataclass(frozen=True)
class Row:
    image: Path
    prompt: str
    answer: str
    where: str  # "file:line", for messages


class PixelRows(Dataset):
    """Pre-computed pixels (N, 3, S, S) with one prompt and answer per row."""

    def __init__(self, pixels: torch.Tensor, prompts: list[str], answers: list[str]) -> None:
        self.pixels, self.prompts, self.answers = pixels, prompts, answers

    def __len__(self) -> int:
        return len(self.prompts)

    def texts(self) -> list[tuple[str, str, str]]:
        """(where, prompt, answer) of every row, for checks that need no image."""
        return [(f"row {i}", p, a) for i, (p, a) in enumerate(zip(self.prompts, self.answers))]

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "images": self.pixels[index],
            "prompt": self.prompts[index],
            "answer": self.answers[index],
        }


class ImageRows(Dataset):
    """Rows read from disk on demand."""

    def __init__(self, rows: list[Row], img_size: int) -> None:
        self.rows, self.img_size = rows, img_size

    def __len__(self) -> int:
        return len(self.rows)

    def texts(self) -> list[tuple[str, str, str]]:
        """(where, prompt, answer) of every row, for checks that need no image."""
        return [(row.where, row.prompt, row.answer) for row in self.rows]

    def __getitem__(self, index: int) -> dict[str, object]:
        row = self.rows[index]
        image = load_image(row.image, where=row.where)
        return {
            "images": to_pixels(image, self.img_size),
            "prompt": row.prompt,
            "answer": row.answer,
        }


# -- the digits ------------------------------------------------------------------------------------
class DigitTextOptions(DatasetOptions):
    """scikit-learn's handwritten digits (8×8, bundled with the library) as captions and answers."""

    style: Literal["caption", "question", "both"] = Field(
        "both", description="caption rows, question rows, or both for every image"
    )
    img_size: int = Field(32, ge=8, description="side of the pixels handed to the model")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[label]}"


def digit_images() -> tuple[list, np.ndarray]:
    """The 1,797 digits as 8×8 grayscale PIL images (0..16 scaled to 0..255), and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return [Image.fromarray(g, mode="L") for g in gray], digits.target


def digit_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train and test indices, stratified by digit."""
    from sklearn.model_selection import train_test_split

    _, labels = digit_images()
    indices = np.arange(len(labels))
    return tuple(
        train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=labels)
    )


def build_digit_text(options: DigitTextOptions) -> Splits:
    images, labels = digit_images()
    pixels = torch.stack([to_pixels(image, options.img_size) for image in images])
    train, test = digit_split(options.test_fraction, options.split_seed)

    def rows(indices: np.ndarray) -> PixelRows:
        chosen, prompts, answers = [], [], []
        for i in indices:
            word = DIGIT_WORDS[labels[i]]
            if options.style in ("caption", "both"):
                chosen.append(i)
                prompts.append(CAPTION_PROMPT)
                answers.append(digit_caption(labels[i]))
            if options.style in ("question", "both"):
                chosen.append(i)
                prompts.append(DIGIT_QUESTION)
                answers.append(word)
        return PixelRows(pixels[chosen], prompts, answers)

    return Splits(train=rows(train), test=rows(test))


def write_digit_images(
    directory: str | Path, split: Literal["train", "test"] = "test"
) -> list[tuple[Path, int]]:
    """Write a split's digits as 8×8 PNG files (``<index>.png``); returns (path, label) pairs.

    For trying ``mambaverse caption`` on images the model did not train on (the default split).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images()
    train, test = digit_split(DigitTextOptions.model_fields["test_fraction"].default, 0)
    written = []
    for i in train if split == "train" else test:
        path = directory / f"{i:04d}.png"
        images[i].save(path)
        written.append((path, int(labels[i])))
    return written


# -- JSON lines ------------------------------------------------------------------------------------
class JsonLinesOptions(DatasetOptions):
    """Image–text rows in a JSON-lines file; images are resized to ``img_size`` when read."""

    path: str
    test_path: str | None = Field(None, description="a second file for the test split")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held out when no test_path")
    split_seed: int = 0
    img_size: int = Field(224, ge=8)
    skip_bad_rows: bool = Field(
        False, description="leave out rows whose image is missing or unreadable (else: an error)"
    )


def read_rows(path: Path, skip_bad_rows: bool) -> list[Row]:
    """The rows of one JSON-lines file, every image checked (opened and decoded)."""
    if not path.is_file():
        raise ConfigError(f"data: JSON-lines file {str(path)!r} does not exist")
    rows, skipped = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = _parse_row(line, path.parent, where)
        try:
            load_image(row.image, where=where)
        except ConfigError as err:
            if not skip_bad_rows:
                raise ConfigError(
                    f"{err} (set data.skip_bad_rows=true to leave such rows out)"
                ) from None
            skipped.append(where)
            continue
        rows.append(row)
    if skipped:
        warnings.warn(
            f"{path}: left out {len(skipped)} row(s) with a missing or unreadable image "
            f"(lines {', '.join(w.rsplit(':', 1)[1] for w in skipped[:10])}"
            f"{' ...' if len(skipped) > 10 else ''})",
            stacklevel=2,
        )
    if not rows:
        raise ConfigError(f"{path}: no usable rows")
    return rows


def _parse_row(line: str, folder: Path, where: str) -> Row:
    expected = '{"image": ..., "caption": ...} or {"image": ..., "prompt": ..., "answer": ...}'
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err.msg}); expected {expected}") from None
    if not isinstance(record, dict) or "image" not in record:
        raise ConfigError(f"{where}: expected {expected}")
    if "caption" in record:
        prompt, answer = CAPTION_PROMPT, record["caption"]
    elif "answer" in record and "prompt" in record:
        prompt, answer = record["prompt"], record["answer"]
    else:
        raise ConfigError(
            f"{where}: a row needs a caption, or a prompt and an answer; expected {expected}"
        )
    if not all(isinstance(v, str) for v in (record["image"], prompt, answer)):
        raise ConfigError(f"{where}: image, caption, prompt and answer must be strings")
    return Row(folder / record["image"], prompt, answer, where)


def build_json_lines(options: JsonLinesOptions) -> Splits:
    from sklearn.model_selection import train_test_split

    rows = read_rows(Path(options.path).expanduser(), options.skip_bad_rows)
    if options.test_path is not None:
        train_rows = rows
        test_rows = read_rows(Path(options.test_path).expanduser(), options.skip_bad_rows)
    else:
        if len(rows) < 2:
            raise ConfigError(f"{options.path}: need at least 2 rows to hold some out for testing")
        train_idx, test_idx = train_test_split(
            np.arange(len(rows)), test_size=options.test_fraction, random_state=options.split_seed
        )
        train_rows, test_rows = [rows[i] for i in train_idx], [rows[i] for i in test_idx]
    return Splits(
        train=ImageRows(train_rows, options.img_size), test=ImageRows(test_rows, options.img_size)
    )
