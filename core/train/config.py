"""The training config: a YAML file validated against a schema, plus dotted overrides.

Every section rejects unknown keys with a one-line error naming the key and the valid ones. Two
sections are open-ended on purpose and validated by their owner instead:

- ``model``: ``name`` plus any keyword the model's builder takes (``model.depth=4``), checked by
  :func:`mambaverse.create_model` against the builder's signature.
- ``data``: ``name`` plus the options of that dataset (:mod:`mambaverse.train.data`), checked
  against the dataset's own schema.

Command-line overrides are ``section.key=value`` (``optim.lr=1e-3``); values are parsed as YAML
(``freeze=[patch_embed.*]``, ``precision=bf16``), with numbers in exponent form (``1e-3``) read as
numbers, which plain YAML would leave as strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..validation import validate


class Section(BaseModel):
    # A command-line value reads as YAML: output_dir=2024 is a number, meant as a name.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ModelSection(BaseModel):
    """``name`` (a registered preset) and overrides of its config, e.g. ``depth: 4``."""

    model_config = ConfigDict(extra="allow")
    name: str = "vim_micro"

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(BaseModel):
    """``name`` (a registered dataset) and its options; see :mod:`mambaverse.train.data`."""

    model_config = ConfigDict(extra="allow")
    name: str = "digits"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimSection(Section):
    """AdamW. Weight decay skips 1-D tensors, biases and the model's ``no_weight_decay()``."""

    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    clip_grad_norm: float | None = Field(1.0, gt=0, description="null: no clipping")


class ScheduleSection(Section):
    """Linear warm-up from 0 to ``optim.lr``, then cosine decay to ``min_lr_ratio * lr``."""

    name: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(40, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class EvalSection(Section):
    every_steps: int | None = Field(
        None, gt=0, description="evaluate every N optimiser steps; null: at each epoch's end"
    )
    batch_size: int | None = Field(None, gt=0, description="null: the training batch size")


class CheckpointSection(Section):
    every_steps: int | None = Field(
        None, gt=0, description="save the full training state every N steps; null: never"
    )
    keep: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")


class TrainConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    epochs: int = Field(6, gt=0)
    max_steps: int | None = Field(None, gt=0, description="optimiser steps; overrides epochs")
    batch_size: int = Field(16, gt=0, description="per process and per micro-batch")
    grad_accum_steps: int = Field(1, gt=0)
    precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="null: what `accelerate launch` was given (default no)"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's and torch's seed range")
    freeze: list[str] = Field(
        default_factory=list, description="parameter-name patterns (fnmatch) to keep fixed"
    )
    log_every: int = Field(10, gt=0)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads per process; null: torch's default (one per core). "
        "Small models train fastest on one, and several slow them down badly on a busy CPU",
    )
    output_dir: str = "runs/train"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) with two of YAML 1.2's rules: ``1e-3`` is a number (YAML
    1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string), and only ``true`` / ``false`` are
    booleans (YAML 1.1 also reads ``no``, ``yes``, ``on``, ``off`` so, which would make
    ``precision: no`` the boolean false). A boolean setting still takes ``yes`` or ``no``:
    pydantic reads those strings as booleans, and a model's boolean parameters take them too
    (:func:`mambaverse.api.build_backbone`). Other YAML 1.1 readings stay (``010`` is octal)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"),
    list("+-0123456789."),
)
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in YamlLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_value(text: str) -> Any:
    """A command-line value, read as YAML (``1e-3`` a number, see :class:`YamlLoader`)."""
    try:
        return yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as err:
        if text.lstrip().startswith(("[", "{")):  # meant as a list or a mapping
            raise ConfigError(
                f"{text!r} is not a valid YAML list or mapping ({str(err).splitlines()[0]}); "
                "quote an item that starts with '*' or '&', e.g. ['*.bias']"
            ) from None
        return text


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Set ``config[a][b] = value`` from ``"a.b=value"``, creating sections as needed."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r}: expected key=value, e.g. optim.lr=1e-3")
    *parents, leaf = key.strip().split(".")
    node = config
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parents[: depth + 1])
            raise ConfigError(f"override {assignment!r}: {prefix} is a value, not a section")
        node = child
    try:
        node[leaf] = parse_value(text)
    except ConfigError as err:
        raise ConfigError(f"override {assignment!r}: {err}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        hint = "" if path.suffix in (".yaml", ".yml") else f"; to set a key, write {path}=VALUE"
        raise ConfigError(f"config file {str(path)!r} does not exist{hint}")
    try:
        raw = yaml.load(path.read_text(), Loader=YamlLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(raw).__name__}")
    return raw


def config_source(path: str | Path | None, overrides: list[str] = ()) -> str:
    """How errors name where a config came from: ``run.yaml + overrides``, ``defaults``."""
    return ("defaults" if path is None else str(path)) + (" + overrides" if overrides else "")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read ``path``, apply ``key=value`` overrides, validate.

    Without a file the schema's defaults apply: they are the default job (a Vision Mamba on the
    digits), written out in examples/configs/digits.yaml.
    """
    raw = {} if path is None else read_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    source = config_source(path, overrides)
    return validate(TrainConfig, raw, source)


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
