"""Checkpoints: safetensors weights plus a JSON config, never pickles.

A mambaverse checkpoint directory holds ``config.json`` (``{"mambaverse": {"backbone", "model",
"config"}}``) and ``model.safetensors``. :func:`load_pretrained` also reads Hugging Face checkpoint
directories (``config.json`` with a ``model_type`` and safetensors or ``.bin`` weights) for every
``model_type`` a backbone declares a converter for (``BackboneSpec.hf_model_types``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .api import build_backbone
from .errors import ConfigError, UnknownNameError
from .manager import catalogue
from .specs import resolve_target

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _sync(path: Path) -> None:
    """Flush a file, or a directory's entries (names created, moved, removed), to disk where the
    system allows it: best effort, since Windows cannot open a directory and some file systems
    (network, FUSE) refuse fsync; the write itself has succeeded either way."""
    if path.is_dir() and os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _sync(Path(folder) / name)
        _sync(Path(folder))


def write_atomically(
    directory: str | Path, write: Callable[[Path], Any], staging: str | Path | None = None
) -> Path:
    """Call ``write(staging)`` then move ``staging`` into place as ``directory``.

    A failure (or a crash) before the move leaves ``directory`` as it was: a complete old copy,
    or nothing. Every file is fsynced before the move and the parent folder after it (where the
    system allows), so that a power loss leaves the new copy whole or the old one in place.
    ``staging`` is a fresh hidden folder beside ``directory`` by default; name it (beside
    ``directory``, so that the move is a rename) when other processes must know where to write
    before ``write`` runs: an old one left by a crash is removed first.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        # mkdir, not mkdtemp: the folder gets the umask's permissions, not 0700.
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    else:
        tmp = Path(staging)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        write(tmp)
        _sync_tree(tmp)  # on disk before the move makes it the copy that counts
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        _sync(directory.parent)  # the moves themselves
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def check_save_target(directory: str | Path, caller: str = "save_pretrained") -> None:
    """The save replaces ``directory`` as a whole: refuse one that holds anything but an
    earlier save (so that no file of the user's is deleted), and the working directory or one
    holding it (which the move would take away from under the process)."""
    directory = Path(directory)
    if Path.cwd().resolve().is_relative_to(directory.resolve()):
        raise ConfigError(
            f"{caller}: {directory} is the working directory or holds it, which the "
            "save would replace as a whole; save into a subdirectory"
        )
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{caller}: {directory} is a file; give a directory to save into")
    foreign = sorted(
        entry.name
        for entry in (directory.iterdir() if directory.is_dir() else ())
        if entry.name not in (CONFIG_FILE, WEIGHTS_FILE)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ConfigError(
            f"{caller}: {directory} holds files that are not a saved model ({shown}), "
            "which the save would delete; save into a new or empty directory"
        )


def _built_config(model: Any, caller: str) -> dict[str, Any]:
    """What :func:`mambaverse.create_model` recorded on ``model`` (backbone, preset, config)."""
    meta = getattr(model, "mambaverse_config", None)
    if meta is None:
        raise ConfigError(
            f"{caller}: this model was not built by mambaverse.create_model, so it has no config "
            "to save"
        )
    return meta


def save_pretrained(model: Any, directory: str | Path) -> Path:
    """Write ``model`` (built by :func:`mambaverse.create_model`) to ``directory``, atomically.

    ``directory`` is created, or replaced when it holds an earlier save (``config.json`` and
    ``model.safetensors`` only); a directory holding anything else is refused. A model with a
    ``checkpoint_config(config) -> config`` method adjusts the config recorded (a path made
    absolute, a source of initial weights dropped: the checkpoint holds the weights)."""
    from safetensors.torch import save_model

    meta = _built_config(model, "save_pretrained")
    check_save_target(directory)
    recorded = getattr(model, "checkpoint_config", None)
    if recorded is not None:  # the model's say in what rebuilds it from the checkpoint
        meta = {**meta, "config": recorded(dict(meta["config"]))}
    if getattr(model, "generation_defaults", None):
        meta = {**meta, "generation": dict(model.generation_defaults)}

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps({"mambaverse": meta}, indent=2))
        save_model(model, str(tmp / WEIGHTS_FILE))

    return write_atomically(directory, write)


# Hugging Face's weight files, in the order transformers looks for them.
_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _hf_weight_files(directory: Path) -> list[Path]:
    """The files holding a Hugging Face checkpoint's weights, found as transformers finds them:
    the first of :data:`_HF_WEIGHTS` present, an index naming its shards. Other weight files
    beside them (a backup, an adapter) are never read."""
    for name in _HF_WEIGHTS:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ConfigError(
                f"{path}: not a weight index ({err!r}); the checkpoint is damaged"
            ) from None
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing:
            raise ConfigError(
                f"{path} names shards that are missing: {', '.join(missing)}; the download is "
                "incomplete"
            )
        return [directory / shard for shard in shards]
    raise ConfigError(
        f"{directory}: no Hugging Face weights ({', '.join(_HF_WEIGHTS)}); the folder holds "
        f"{', '.join(sorted(p.name for p in directory.iterdir())) or 'nothing'}"
    )


def save_hf(model: Any, directory: str | Path) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory (config.json, model.safetensors)
    that transformers' ``AutoModelForCausalLM.from_pretrained`` loads, atomically; for backbones
    that declare an exporter (``BackboneSpec.hf_export``: ``mamba_lm``, Mamba and Mamba-2)."""
    from safetensors.torch import save_file

    meta = _built_config(model, "save_hf")
    plugin, spec = catalogue().lookup("backbones", meta["backbone"])
    if spec.hf_export is None:
        exporting = sorted(
            name
            for name, owners in catalogue().entries["backbones"].items()
            if any(s.hf_export is not None for _, s in owners)
        )
        raise ConfigError(
            f"save_hf: backbone {spec.name!r} (from {plugin}) has no Hugging Face exporter; "
            f"backbones with one: {', '.join(exporting) or 'none'} (save_pretrained writes a "
            "mambaverse checkpoint of any model)"
        )
    hf_config, tensors = resolve_target(spec.hf_export)(model)
    check_save_target(directory, "save_hf")

    def write(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
        contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
        save_file(contiguous, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})

    return write_atomically(directory, write)


def _read_tensors(directory: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for file in _hf_weight_files(directory):
        if file.suffix == ".safetensors":
            tensors.update(load_file(str(file)))
        else:
            tensors.update(torch.load(file, map_location="cpu", weights_only=True))
    return tensors


def _hf_eos_token_id(directory: Path, config: dict[str, Any]) -> Any:
    """The end-of-sequence id(s) transformers' ``generate`` would stop at: generation_config.json's,
    else config.json's (None when neither names one)."""
    generation = directory / "generation_config.json"
    if generation.is_file():
        try:
            eos = json.loads(generation.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, AttributeError):
            eos = None
        if eos is not None:
            return eos
    return config.get("eos_token_id")


def _hf_converter(model_type: str) -> tuple[str, Any]:
    cat = catalogue()
    known = {}
    for name, owners in cat.entries["backbones"].items():
        for plugin, spec in owners:
            for hf_type, converter in spec.hf_model_types.items():
                known[hf_type] = (f"{plugin}:{name}", converter)
    if model_type not in known:
        raise UnknownNameError(
            f"no backbone imports Hugging Face model_type {model_type!r}; supported: {', '.join(sorted(known)) or 'none'}"
        )
    backbone, converter = known[model_type]
    return backbone, resolve_target(converter)


def _training_hint(directory: Path) -> str:
    """Where the model is, when ``directory`` is a training run or one of its checkpoints."""
    from .train.checkpoint import CHECKPOINTS, MANIFEST
    from .train.loop import MODEL_DIR

    if (directory / MODEL_DIR / CONFIG_FILE).is_file():
        return f"; it is a training run: its model is {directory / MODEL_DIR}"
    if (directory / MANIFEST).is_file() and directory.parent.name == CHECKPOINTS:
        model = directory.parent.parent / MODEL_DIR
        found = f"; the run's model is {model}" if (model / CONFIG_FILE).is_file() else ""
        return f"; it is a training checkpoint, for `mambaverse train --resume {directory}`{found}"
    return ""


# Config keys an import may not override: they change how the checkpoint's tensors are read.
_WEIGHT_KEYS = ("tie_embeddings", "vocab_size", "pad_vocab_size_multiple", "d_model")


def _load_converted(model: Any, state: dict[str, Any], strict: bool, directory: Path) -> None:
    """Load a converted Hugging Face state dict. A missing or unexpected tensor, or a tensor of
    another shape, is a :class:`ConfigError` naming them; with ``strict=False`` missing and
    unexpected tensors are left out with a warning that lists them."""
    import warnings

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{name} {tuple(state[name].shape)} (the model's is {tuple(expected[name].shape)})"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]

    def listed(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")

    if wrong:
        raise ConfigError(f"{directory}: tensors of another shape: {listed(wrong)}")
    problems = [
        f"{label} {listed(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected))
        if names
    ]
    if problems and strict:
        raise ConfigError(
            f"{directory}: {'; '.join(problems)} (names after conversion to mambaverse's); "
            "load_pretrained(..., strict=False) loads the rest, leaving missing tensors as "
            "initialised"
        )
    if problems:
        warnings.warn(f"{directory}: loaded with strict=False: {'; '.join(problems)}", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def _target_dtype(dtype: Any) -> Any:
    """``dtype`` as load_pretrained takes it (None, "auto", a torch dtype or its name), checked."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return getattr(torch, dtype.removeprefix("torch."))
    raise ConfigError(f"load_pretrained: dtype={dtype!r}; give one of {', '.join(_DTYPES)}")


def _stored_dtype(dtypes: list[Any]) -> Any:
    """The floating dtype most of a checkpoint's tensors are stored in (None if none is)."""
    floating = [d for d in dtypes if d.is_floating_point]
    return max(set(floating), key=floating.count) if floating else None


def _safetensors_dtypes(path: Path) -> list[Any]:
    import torch
    from safetensors import safe_open

    names = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
    }
    with safe_open(str(path), "pt") as f:
        return [names.get(f.get_slice(k).get_dtype(), torch.int64) for k in f.keys()]  # noqa: SIM118 (not a dict)


def _place(model: Any, dtype: Any, device: Any) -> Any:
    """``model`` moved to ``device`` and cast to ``dtype`` (None: left as they are)."""
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model


def load_pretrained(
    path: str | Path, strict: bool = True, dtype: Any = None, device: Any = None, **overrides: Any
) -> Any:
    """Load a mambaverse or Hugging Face checkpoint directory into a mambaverse model.

    ``overrides`` change config values that do not affect the weights' shapes (e.g. ``kernels``).
    ``dtype``: None keeps the model's own (float32), ``"auto"`` takes the checkpoint's (a
    Hugging Face config.json's ``dtype`` / ``torch_dtype`` as transformers' ``dtype="auto"``,
    else the one most of the stored tensors have), or a torch dtype
    (``torch.bfloat16``, ``"bfloat16"``). ``device``: where the model goes (``"cuda"``).
    """
    dtype = _target_dtype(dtype)
    directory = Path(path)
    config_file = directory / CONFIG_FILE
    if not directory.exists():
        interrupted = sorted(
            directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime
        )
        hint = (
            f"; a save was interrupted between its two moves: the previous copy is {interrupted[-1]}"
            ", rename it back"
            if interrupted
            else " (a checkpoint directory was expected)"
        )
        raise ConfigError(f"{directory}: does not exist{hint}")
    if directory.is_file():
        raise ConfigError(
            f"{directory}: a file; load_pretrained takes the checkpoint's folder "
            f"(load_pretrained({str(directory.parent)!r}))"
        )
    if not config_file.is_file():
        raise ConfigError(
            f"{directory}: not a checkpoint directory (no {CONFIG_FILE}){_training_hint(directory)}"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{config_file}: not valid JSON ({err}); the checkpoint is damaged"
        ) from None

    if "mambaverse" in config:
        meta = config["mambaverse"]
        model = build_backbone(
            meta["backbone"], {**meta["config"], **overrides}, preset=meta.get("model")
        )
        from safetensors.torch import load_model

        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ConfigError(
                f"{directory}: {WEIGHTS_FILE} is missing; the checkpoint is incomplete"
            )
        try:
            load_model(model, str(weights), strict=strict)
        except Exception as err:
            raise ConfigError(
                f"{weights}: cannot be loaded into {meta['backbone']} ({err})"
            ) from None
        if meta.get("generation"):
            model.generation_defaults = dict(meta["generation"])
        if dtype == "auto":
            dtype = _stored_dtype(_safetensors_dtypes(weights))
        return _place(model, dtype, device)

    if "model_type" in config:
        backbone, convert = _hf_converter(config["model_type"])
        try:
            our_config, state_dict = convert(config, _read_tensors(directory))
        except KeyError as err:  # a key the converter needs and transformers has no default for
            raise ConfigError(f"{config_file}: required key {err} is missing") from None
        changed = sorted(
            key
            for key in _WEIGHT_KEYS
            if key in overrides and key in our_config and overrides[key] != our_config[key]
        )
        if changed:
            raise ConfigError(
                f"{directory}: {', '.join(f'{k}={overrides[k]!r}' for k in changed)} cannot be "
                f"overridden: the checkpoint's weights were made with "
                f"{', '.join(f'{k}={our_config[k]!r}' for k in changed)}"
            )
        model = build_backbone(backbone, {**our_config, **overrides})
        _load_converted(model, state_dict, strict, directory)
        eos = _hf_eos_token_id(directory, config)
        if eos is not None:
            model.generation_defaults = {"eos_token_id": eos}
        if dtype == "auto":
            declared = config.get("dtype") or config.get("torch_dtype")  # transformers 5 / 4
            dtype = (
                _target_dtype(declared)
                if declared in _DTYPES[1:]
                else _stored_dtype([t.dtype for t in state_dict.values()])
            )
        return _place(model, dtype, device)

    raise ConfigError(
        f"{config_file}: neither a mambaverse config nor a Hugging Face one (no model_type)"
    )
