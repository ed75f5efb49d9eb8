"""Training datasets, by name: the ``data`` section of a training config.

``data.name`` picks a :class:`DatasetSpec` from :data:`DATASETS`; the section's other keys are
validated against the spec's options schema and passed to its builder. To add a dataset (e.g. a
captioning corpus with its own tokenizer), call :func:`register_dataset` from the module that
defines it, before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, create_model

from ...errors import ConfigError, unknown_name
from ...validation import validate
from ..config import DataSection
from .base import IGNORE_INDEX, DatasetOptions, Splits, TensorItems
from .images import (
    CaptionOptions,
    DigitsOptions,
    ImageFolderOptions,
    build_captions,
    build_digits,
    build_image_folder,
)
from .tokens import (
    InductionHeadsOptions,
    SelectiveCopyingOptions,
    TokenFileOptions,
    build_token_file,
    induction_heads_sample,
    selective_copying_sample,
    synthetic_builder,
)

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "DatasetOptions",
    "DatasetSpec",
    "Splits",
    "TensorItems",
    "build_dataset",
    "register_dataset",
]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the ``data`` section can name.

    options: its schema (a :class:`DatasetOptions` subclass); the config's ``data`` keys.
    build:   ``build(options) -> Splits``.
    task:    the model task its items are for: ``"vision"``, ``"lm"`` or ``"vlm"``.
    """

    name: str
    options: type[DatasetOptions]
    build: Callable[[Any], Splits]
    task: str
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


def build_dataset(section: DataSection, task: str, source: str) -> Splits:
    """Validate ``section`` against its dataset's options and build the splits for ``task``."""
    if section.name not in DATASETS:
        err = unknown_name("dataset", section.name, DATASETS)
        raise type(err)(f"{source}: data.name: {err}")
    spec = DATASETS[section.name]
    if spec.task != task:
        fitting = sorted(n for n, s in DATASETS.items() if s.task == task)
        raise ConfigError(
            f"{source}: data.name: dataset {spec.name!r} is for {spec.task} models, but the model "
            f"is a {task} model; datasets for {task}: {', '.join(fitting) or 'none'}"
        )
    # Validate as {"data": {...}} so errors read "data.seq_len: ..." and "data: unknown key ...".
    wrapper = create_model(
        "Config", __config__=ConfigDict(extra="forbid"), data=(spec.options, ...)
    )
    options = validate(wrapper, {"data": section.model_dump()}, source).data
    return spec.build(options)


for _spec in (
    DatasetSpec("digits", DigitsOptions, build_digits, "vision", DigitsOptions.__doc__ or ""),
    DatasetSpec(
        "imagefolder",
        ImageFolderOptions,
        build_image_folder,
        "vision",
        "images in class folders",
    ),
    DatasetSpec("captions", CaptionOptions, build_captions, "vlm", "image–caption JSON lines"),
    DatasetSpec("tokens", TokenFileOptions, build_token_file, "lm", "a token or text file"),
    DatasetSpec(
        "selective_copying",
        SelectiveCopyingOptions,
        synthetic_builder(selective_copying_sample),
        "lm",
        "Mamba paper: selective copying",
    ),
    DatasetSpec(
        "induction_heads",
        InductionHeadsOptions,
        synthetic_builder(induction_heads_sample),
        "lm",
        "Mamba paper: induction heads",
    ),
):
    register_dataset(_spec)

# The vision-language datasets that the model itself tokenises (vlm_digits, vlm_jsonl) register
# themselves when their module is imported; it builds on this package, so it comes last.
from mambaverse.plugins.cobra import data as _vlm_data  # noqa: E402, F401
