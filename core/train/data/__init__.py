"""Training datasets, by name: the ``data`` section of a training config.

``data.name`` picks a :class:`~mambaverse.DatasetSpec`: one of the core's own (:data:`DATASETS`)
or one a plugin contributes through the ``mambaverse_datasets`` hook (``plugin:name`` picks one
of two that share a name). The section's other keys are validated against the spec's options
schema and passed to its builder. To add a dataset, a package declares it in a plugin; a script
can also call :func:`register_dataset` before training starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, create_model

from ...errors import ConfigError, UnknownNameError
from ...manager import catalogue, find
from ...specs import DatasetSpec
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
    "datasets",
    "register_dataset",
]


# The core's datasets and those registered at run time; plugins' come from the catalogue.
DATASETS: dict[str, DatasetSpec] = {}
CORE = "mambaverse"  # their owner, for ``mambaverse:name``


def register_dataset(spec: DatasetSpec) -> None:
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


def datasets() -> dict[str, list[tuple[str, DatasetSpec]]]:
    """Every dataset: name -> ``[(owner, spec), ...]``, the core's first, then plugins'."""
    table: dict[str, list[tuple[str, Any]]] = {n: [(CORE, s)] for n, s in DATASETS.items()}
    for name, owners in catalogue().entries["datasets"].items():
        table.setdefault(name, []).extend(owners)
    return table


def build_dataset(section: DataSection, task: str, source: str) -> Splits:
    """Validate ``section`` against its dataset's options and build the splits for ``task``."""
    table = datasets()
    try:
        _, spec = find(table, "datasets", section.name)
    except UnknownNameError as err:
        raise type(err)(
            f"{source}: data.name: {err}; datasets: {', '.join(sorted(table))}"
        ) from None
    if spec.task != task:
        fitting = sorted(n for n, owners in table.items() if owners[0][1].task == task)
        raise ConfigError(
            f"{source}: data.name: dataset {spec.name!r} is for {spec.task} models, but the model "
            f"is a {task} model; datasets for {task}: {', '.join(fitting) or 'none'}"
        )
    options_schema, build = spec.load()
    # Validate as {"data": {...}} so errors read "data.seq_len: ..." and "data: unknown key ...".
    wrapper = create_model(
        "Config", __config__=ConfigDict(extra="forbid"), data=(options_schema, ...)
    )
    options = validate(wrapper, {"data": section.model_dump()}, source).data
    return build(options)


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
