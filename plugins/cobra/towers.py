"""Vision towers by name: images (B, 3, H, W) in [0, 1] -> patch features (B, N, C).

A tower is named in one of three ways:

- ``"vim_micro"``, ``"efficientvmamba_micro"``, ...: a mambaverse vision preset;
- ``"timm:<model>"``: a model of timm's registry (``timm:vit_large_patch14_reg4_dinov2``);
- ``"open_clip:<model>"``: the visual tower of an open_clip model (``open_clip:ViT-B-16-SigLIP``).

Every tower is built with random weights (never downloaded) unless ``weights`` names a local file
(timm: a checkpoint for timm's own loader, which also maps official checkpoints' key names;
open_clip: a full CLIP checkpoint or only its ``visual.*`` part; mambaverse: a checkpoint
directory or safetensors file).

Features come from block ``layer`` (default -2, the second-to-last, as Cobra and LLaVA take them),
before the final norm, without class/register tokens, as ``forward_intermediates`` of timm and
open_clip returns them. Each tower resizes the images to its own ``img_size`` and normalises them
with its own mean and std, so several towers can share one batch of images. Cobra's fusion of
DINOv2 and SigLIP concatenates their features channel-wise (:class:`FusedTowers`), which needs
the same patch grid from every tower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.errors import ConfigError, nearest, unknown_keys, unknown_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREFIXES = ("timm:", "open_clip:")


@dataclass(frozen=True)
class TowerSpec:
    """One tower of a config: ``"name"`` or ``{name, weights, layer, config}``.

    weights: a local file or directory to load, None = random init. layer: the block whose
    output is the features (negative counts from the end). config: keyword arguments for the
    tower's constructor (timm.create_model, open_clip.create_model or mambaverse.create_model).
    """

    name: str
    weights: str | None = None
    layer: int = -2
    config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: str | Mapping[str, Any]) -> TowerSpec:
        if isinstance(entry, str):
            return cls(entry)
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(
                f"towers: expected a tower name or {{name: ..., weights: ..., layer: ..., "
                f"config: {{...}}}}, got {entry!r}"
            )
        valid = ("name", "weights", "layer", "config")
        if set(entry) - set(valid):
            raise unknown_keys("tower", set(entry) - set(valid), valid)
        return cls(**entry)


class VisionTower(nn.Module):
    """An image encoder and how to read patch features from it.

    extract: ``extract(model, pixels, layer) -> (B, C, h, w) or (B, N, C)`` features.
    num_features: C, the channels of those features.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        extract: Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_features: int,
        layer: int,
    ) -> None:
        super().__init__()
        self.name, self.model, self._extract = name, model, extract
        self.img_size, self.num_features, self.layer = img_size, num_features, layer
        # Not persistent: they are part of the tower's definition, not of its weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> features (B, N, C)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"vision tower {self.name!r}: expected images (batch, 3, height, width), "
                f"got {tuple(images.shape)}"
            )
        if images.shape[-2:] != (self.img_size, self.img_size):
            images = F.interpolate(
                images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )
        pixels = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self._extract(self.model, pixels, self.layer)
        if features.dim() == 4:  # (B, C, h, w) -> (B, h·w, C), row-major patches
            features = features.flatten(2).transpose(1, 2)
        return features


class FusedTowers(nn.Module):
    """Several towers on the same images, features concatenated channel-wise (Cobra's fusion):
    (B, N, C_1) ⊕ ... ⊕ (B, N, C_k) -> (B, N, C_1 + ... + C_k)."""

    def __init__(self, towers: Sequence[VisionTower]) -> None:
        super().__init__()
        if not towers:
            raise ConfigError("towers: give at least one vision tower")
        self.towers = nn.ModuleList(towers)
        self.num_features = sum(t.num_features for t in towers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = [tower(images) for tower in self.towers]
        counts = [f.shape[1] for f in features]
        if len(set(counts)) > 1:
            detail = ", ".join(f"{t.name}: {n}" for t, n in zip(self.towers, counts))
            raise ValueError(
                f"vision towers give different numbers of patches ({detail}); fused towers need "
                "the same patch grid: choose img_size and patch sizes that agree"
            )
        return torch.cat(features, dim=-1)


def build_towers(entries: str | Sequence[str | Mapping[str, Any]], img_size: int) -> FusedTowers:
    """The towers of a config, each built for square images of side ``img_size``."""
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    return FusedTowers([build_tower(TowerSpec.parse(e), img_size) for e in entries])


def build_tower(spec: TowerSpec, img_size: int) -> VisionTower:
    """One tower, for ``img_size`` unless its own config sets ``img_size`` (towers of different
    patch sizes reach the same grid that way: DINOv2 /14 at 336 px and SigLIP /16 at 384 px)."""
    config = dict(spec.config)
    img_size = int(config.pop("img_size", img_size))
    spec = TowerSpec(spec.name, spec.weights, spec.layer, config)
    kind, sep, model_name = spec.name.partition(":")
    try:
        if sep and f"{kind}:" in PREFIXES:
            builder = _timm_tower if kind == "timm" else _open_clip_tower
            return builder(spec, model_name, img_size)
        return _mambaverse_tower(spec, img_size)
    except ConfigError as err:  # say which tower (its weights file, its options) is wrong
        if spec.name in str(err):
            raise
        raise ConfigError(f"vision tower {spec.name!r}: {err}") from None


# -- the three kinds -----------------------------------------------------------------------------
def _intermediate(model: nn.Module, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """timm's and open_clip's ``forward_intermediates``: block ``layer``'s patch tokens (B, C, h, w)."""
    out = model.forward_intermediates(
        pixels, indices=[layer], intermediates_only=True, output_fmt="NCHW"
    )
    return (out["image_intermediates"] if isinstance(out, dict) else out)[0]


def _forward_features(model: nn.Module, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """Models without ``forward_intermediates``: their final features, class token dropped."""
    del layer  # only the last block's output is available
    features = model.forward_features(pixels)
    prefix = getattr(model, "num_prefix_tokens", 0)
    return features[:, prefix:] if features.dim() == 3 else features


def _feature_channels(model: nn.Module, layer: int, name: str) -> int:
    info = getattr(model, "feature_info", None)
    if info:
        try:
            entry = info[layer]
        except IndexError:
            raise ConfigError(
                f"vision tower {name!r}: layer {layer} is out of range; it has {len(info)} blocks"
            ) from None
        return int(entry["num_chs"])
    transformer = getattr(model, "transformer", None)  # open_clip's VisionTransformer
    if transformer is not None and hasattr(transformer, "width"):
        return int(transformer.width)
    return int(model.num_features)


def _timm_tower(spec: TowerSpec, model_name: str, img_size: int) -> VisionTower:
    import timm

    if not timm.is_model(model_name):
        candidates = [f"timm:{n}" for n in timm.list_models()]
        raise unknown_name("timm vision tower", spec.name, candidates)
    options: dict[str, Any] = {"num_classes": 0, **spec.config}
    if spec.weights is not None:
        # timm's own loader: applies the model's checkpoint filter (official key names,
        # position-embedding resizing); a given file is never replaced by a download.
        options.update(
            pretrained=True, pretrained_cfg_overlay={"file": str(_existing(spec.weights))}
        )
    try:
        try:
            model = timm.create_model(model_name, img_size=img_size, **options)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(model_name, **options)  # convnets take any image size
    except (TypeError, RuntimeError, ValueError) as err:
        raise ConfigError(f"vision tower {spec.name!r}: {err}") from None
    cfg = model.pretrained_cfg
    return VisionTower(
        spec.name,
        model,
        _intermediate,
        img_size,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        _feature_channels(model, spec.layer, spec.name),
        spec.layer,
    )


def _open_clip_tower(spec: TowerSpec, model_name: str, img_size: int) -> VisionTower:
    import open_clip

    if model_name not in open_clip.list_models():
        candidates = [f"open_clip:{n}" for n in open_clip.list_models()]
        raise unknown_name("open_clip vision tower", spec.name, candidates)
    try:
        clip = open_clip.create_model(
            model_name, pretrained=None, force_image_size=img_size, **spec.config
        )
    except (TypeError, RuntimeError, ValueError) as err:
        raise ConfigError(f"vision tower {spec.name!r}: {err}") from None
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    visual = clip.visual  # the text tower is dropped here
    if spec.weights is not None:
        load_weights(visual, spec.weights, strip_prefix="visual.")
    trunk = getattr(visual, "trunk", visual)  # timm-based towers (SigLIP) keep a timm trunk
    return VisionTower(
        spec.name,
        visual,
        _intermediate,
        img_size,
        preprocess["mean"],
        preprocess["std"],
        _feature_channels(trunk, spec.layer, spec.name),
        spec.layer,
    )


def _mambaverse_tower(spec: TowerSpec, img_size: int) -> VisionTower:
    from mambaverse.api import create_model, list_models, model_info

    vision = list_models(task="vision")
    if spec.name not in vision:
        # A misspelt source ("timmm:vit_...") is suggested with the source spelt right.
        source, sep, model_name = spec.name.partition(":")
        sources = nearest(source, [prefix[:-1] for prefix in PREFIXES]) if sep else []
        err = unknown_name(
            "vision tower", spec.name, vision + [f"{s}:{model_name}" for s in sources]
        )
        raise type(err)(f"{err} (or name a timm:<model> or open_clip:<model>)")
    accepted = model_info(spec.name, count_params=False)["config"]
    options = {k: v for k, v in {"img_size": img_size, "num_classes": 0}.items() if k in accepted}
    model = create_model(spec.name, **{**options, **spec.config})
    if spec.weights is not None:
        load_weights(model, spec.weights, skip_prefixes=("head.",))
    extract = _intermediate if hasattr(model, "forward_intermediates") else _forward_features
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return VisionTower(
        spec.name,
        model,
        extract,
        img_size,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        _feature_channels(model, spec.layer, spec.name),
        spec.layer,
    )


# -- local weights ---------------------------------------------------------------------------------
def _existing(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(f"weights {str(resolved)!r} do not exist")
    return resolved


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a torch file (read with weights_only) or a checkpoint dir."""
    resolved = _existing(path)
    if resolved.is_dir():
        files = sorted(resolved.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"weights: {resolved} holds no *.safetensors file")
    else:
        files = [resolved]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update(load_file(str(file)))
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
            tensors.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
    return tensors


def load_weights(
    model: nn.Module, path: str, strip_prefix: str = "", skip_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``path`` into ``model`` (a tower, or a VLM's projector): every parameter must be
    found, nothing left over (keys under ``skip_prefixes``, such as an unused head, excepted);
    with ``strip_prefix``, only the keys under it are read when the file has any."""
    what = type(model).__name__
    tensors = read_state_dict(path)
    if strip_prefix and any(k.startswith(strip_prefix) for k in tensors):
        tensors = {
            k[len(strip_prefix) :]: v for k, v in tensors.items() if k.startswith(strip_prefix)
        }
    tensors = {k: v for k, v in tensors.items() if not k.startswith(skip_prefixes)}
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise ConfigError(f"weights {path!r} do not fit the {what}: {err}") from None
    missing = [k for k in result.missing_keys if not k.startswith(skip_prefixes)]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"weights {path!r} do not fit the {what}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
        )
