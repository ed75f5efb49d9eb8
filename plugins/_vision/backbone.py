"""timm's model conventions, shared by every mambaverse vision backbone.

A subclass builds its layers, then calls :meth:`VisionBackbone.init_head` and
:meth:`VisionBackbone.init_features`, and implements ``forward_features`` (images -> unpooled
features), ``pool`` (features -> (B, num_features)) and ``forward_intermediates``. It then has
what timm and open_clip expect of a model:

- ``forward(x)`` = ``forward_head(forward_features(x))``, or the list of feature maps of
  ``out_indices`` when built with ``features_only=True`` (``feature_info`` describes them);
- ``forward_head(x, pre_logits=False)``, ``reset_classifier(num_classes, global_pool=None)``,
  ``get_classifier()``, ``num_classes``, ``num_features``;
- ``set_grad_checkpointing(enable)``, ``no_weight_decay()``, ``group_matcher()``;
- ``pretrained_cfg`` / ``default_cfg`` with the input size and the normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mambaverse.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Parameters kept out of weight decay wherever they appear: the SSM's A and D (as in mamba_ssm,
# which marks them ``_no_weight_decay``), position embeddings and class tokens.
NO_WEIGHT_DECAY_SUFFIXES = ("A_log", ".D", "pos_embed", "cls_token")


class VisionBackbone(nn.Module):
    """Base class: head, pooling, feature extraction and input checks in timm's conventions."""

    family = "vision backbone"  # the name used in error messages
    global_pools: tuple[str, ...] = ("avg", "")  # pooling kinds ``pool`` understands

    # -- set-up (called by subclasses) ------------------------------------------------------------
    def init_head(
        self,
        num_classes: int,
        num_features: int,
        global_pool: str,
        drop_rate: float,
        in_chans: int,
        img_size: int | tuple[int, int],
        stride: int,
        crop_pct: float,
    ) -> None:
        if global_pool not in self.global_pools:
            raise ConfigError(
                f"{self.family}: global_pool must be one of {self.global_pools}, got {global_pool!r}"
            )
        if num_classes < 0:
            raise ConfigError(f"{self.family}: num_classes must be >= 0, got {num_classes}")
        self.num_classes, self.num_features, self.global_pool = (
            num_classes,
            num_features,
            global_pool,
        )
        self.in_chans, self.stride = in_chans, stride
        self.img_size = to_pair(img_size)
        check_image_size(self.family, self.img_size, stride)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.pretrained_cfg = {
            "url": "",
            "num_classes": num_classes,
            "input_size": (in_chans, *self.img_size),
            "pool_size": self.pool_size(),
            "crop_pct": crop_pct,
            "interpolation": "bicubic",
            "fixed_input_size": False,
            "mean": IMAGENET_MEAN[:in_chans] if in_chans <= 3 else (0.5,) * in_chans,
            "std": IMAGENET_STD[:in_chans] if in_chans <= 3 else (0.5,) * in_chans,
            "first_conv": self.first_conv,
            "classifier": "head",
        }

    def init_features(
        self, features_only: bool, out_indices: Sequence[int], feature_info: list[dict[str, Any]]
    ) -> None:
        """``feature_info``: one dict per stage or block (num_chs, reduction, module)."""
        self.features_only, self.feature_info = features_only, feature_info
        self.out_indices = tuple(out_indices)
        if not features_only:
            return
        count = len(feature_info)
        if any(not -count <= i < count for i in out_indices):
            raise ConfigError(
                f"{self.family}: out_indices {tuple(out_indices)} out of range; this model has "
                f"{count} feature levels (0..{count - 1}, or negative from the end)"
            )
        self.out_indices = tuple(i % count for i in out_indices)
        self.feature_info = [feature_info[i] for i in self.out_indices]
        self.reset_classifier(0, "")

    # -- what subclasses implement --------------------------------------------------------------
    first_conv = "patch_embed.proj"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool_size(self) -> tuple[int, int] | None:
        return None

    def forward_intermediates(self, x: torch.Tensor, **kwargs: Any) -> Any:
        raise NotImplementedError

    # -- timm API -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(
                x, indices=list(self.out_indices), intermediates_only=True
            )
        return self.forward_head(self.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in self.global_pools:
                raise ConfigError(
                    f"{self.family}: global_pool must be one of {self.global_pools}, got {global_pool!r}"
                )
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = next(self.parameters()).device
        self.head = (
            nn.Linear(self.num_features, num_classes, device=device)
            if num_classes > 0
            else nn.Identity()
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {
            name for name, _ in self.named_parameters() if name.endswith(NO_WEIGHT_DECAY_SUFFIXES)
        }

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    # -- helpers for subclasses ----------------------------------------------------------------
    def run(self, block: Callable[..., Any], *args: Any) -> Any:
        """``block(*args)``, recomputed in the backward pass when grad checkpointing is on."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Raise a one-line error for images this model cannot take; return (H, W)."""
        if x.dim() != 4:
            raise ValueError(
                f"{self.family}: expected images (batch, {self.in_chans}, height, width), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            if x.shape[3] == self.in_chans:
                fix = "they look NHWC (batch, height, width, channels): pass x.permute(0, 3, 1, 2)"
            else:
                fix = f"build the model with in_chans={x.shape[1]} or convert the images"
            raise ValueError(
                f"{self.family}: expected {self.in_chans} input channels (in_chans={self.in_chans}), "
                f"got {x.shape[1]} (input shape {tuple(x.shape)}); {fix}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"{self.family}: expected floating-point images, got {x.dtype}; convert them "
                "(e.g. x.float() / 255, then normalise with the model's pretrained_cfg mean and std)"
            )
        weights = next(self.parameters()).dtype
        if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"{self.family}: images are {x.dtype} but the model's weights are {weights}; "
                f"convert one to the other (x.to({weights}) or model.to({x.dtype})), or run "
                "under torch.autocast"
            )
        size = (x.shape[2], x.shape[3])
        check_image_size(self.family, size, self.stride)
        return size


def to_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def check_image_size(family: str, size: tuple[int, int], stride: int) -> None:
    height, width = size
    if height % stride or width % stride or height <= 0 or width <= 0:
        fix = (
            max(stride, round(height / stride) * stride),
            max(stride, round(width / stride) * stride),
        )
        raise ValueError(
            f"{family}: image size {height}×{width} is not divisible by the model's stride "
            f"{stride}; use a multiple of {stride}, e.g. {fix[0]}×{fix[1]}"
        )


def init_weights(
    model: nn.Module, skip: tuple[type[nn.Module], ...] = (), linear_std: float = 0.02
) -> None:
    """timm/Swin-style init: Linear weights ~ truncated normal(std), biases 0; LayerNorm 1, 0.

    Modules of the ``skip`` types and everything inside them keep their own initialisation (the
    SSM's dt_proj has a special one, and x_proj keeps PyTorch's default as in the papers' code).
    """
    skipped = {
        id(m) for outer in model.modules() if isinstance(outer, skip) for m in outer.modules()
    }
    for module in model.modules():
        if id(module) in skipped:
            continue
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=linear_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def intermediate_indices(
    family: str, indices: int | Sequence[int] | None, count: int, output_fmt: str
) -> list[int]:
    """timm's ``forward_intermediates`` convention: None = all ``count`` levels, an int n = the
    last n, a sequence = those (negative from the end). Also checks ``output_fmt``."""
    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"{family}: output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        return list(range(count - indices, count))
    return sorted(i % count for i in indices)
