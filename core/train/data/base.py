"""What every dataset builder returns, and the containers they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Dataset

IGNORE_INDEX = -100  # label of positions that carry no loss (padding, prompts, noise)


class DatasetOptions(BaseModel):
    """Base of a dataset's options; the config's ``data`` section is validated against it."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # path=2024 is a name
    name: str


@dataclass
class Splits:
    """A dataset's two fixed splits and the model config they imply.

    Items are dicts of tensors; the keys tell the task what to feed the model:
    ``{"images", "labels"}`` (vision), ``{"input_ids", "labels"}`` (lm) or
    ``{"images", "input_ids", "labels"}`` (vlm). ``labels`` are the targets of the loss, aligned
    with the model's outputs (for sequences: position t holds the token to predict at t), with
    :data:`IGNORE_INDEX` where there is nothing to predict.

    ``model_defaults``: config keys the data decides (``num_classes``, ``img_size``, ``in_chans``,
    ``vocab_size``), applied unless the config's ``model`` section sets them.
    """

    train: Dataset
    test: Dataset
    model_defaults: dict[str, Any] = field(default_factory=dict)


class TensorItems(Dataset):
    """Rows of equally long tensors, served as dicts: ``items[i] = {key: tensor[i]}``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }"
            )
        self.tensors = dict(tensors)
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: tensor[index] for key, tensor in self.tensors.items()}
