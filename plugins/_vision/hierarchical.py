"""Four-stage (pyramid) backbones: a stem, then stages that each downsample and run blocks.

    x   = stem(image)                              (B, H/p, W/p, C0), channels last
    for stage i:  x = norm_i(blocks_i(down_i(x)))   down_0 = identity; down_i halves H, W
    out = norm(x)                                  forward_features returns it as (B, C, h, w)

Stage i's output (before the next downsampling) is feature level i: ``features_only=True``
returns those of ``out_indices`` as NCHW maps, ``forward_intermediates`` likewise. The input
must be divisible by the total stride p · 2^(stages - 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mambaverse.plugins.mixers.base import kernel_scope

from .backbone import VisionBackbone, intermediate_indices
from .layers import drop_path_rates


class Stage(nn.Module):
    """down (B, H, W, C) -> (B, H/2, W/2, C'), then the blocks, then norm (channels last)."""

    def __init__(
        self, down: nn.Module, blocks: Sequence[nn.Module], norm: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.down, self.blocks = down, nn.ModuleList(blocks)
        self.norm = norm if norm is not None else nn.Identity()


def build_stages(
    dims: Sequence[int],
    depths: Sequence[int],
    drop_path_rate: float,
    downsample: Callable[[int, int], nn.Module],
    block: Callable[[int, int, float], nn.Module],
    norm: Callable[[int, int], nn.Module | None] | None = None,
) -> nn.ModuleList:
    """The stages of a pyramid: stage i is ``downsample(dims[i - 1], dims[i])`` (none for i = 0),
    then ``depths[i]`` blocks ``block(i, dims[i], drop_path)``, then ``norm(i, dims[i])`` (none
    by default). Stochastic depth rises linearly from 0 to ``drop_path_rate`` over all blocks."""
    rates = iter(drop_path_rates(drop_path_rate, sum(depths)))
    stages = nn.ModuleList()
    for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
        down = nn.Identity() if i == 0 else downsample(dims[i - 1], dim)
        blocks = [block(i, dim, next(rates)) for _ in range(depth)]
        stages.append(Stage(down, blocks, norm(i, dim) if norm else None))
    return stages


class HierarchicalBackbone(VisionBackbone):
    """Subclasses set ``self.stem``, ``self.stages`` (Stage list), ``self.norm`` and ``self.kernels``,
    then call :meth:`init_pyramid`."""

    first_conv = "stem.0"

    def init_pyramid(
        self,
        dims: Sequence[int],
        patch_size: int,
        num_classes: int,
        global_pool: str,
        drop_rate: float,
        in_chans: int,
        img_size: int | tuple[int, int],
        features_only: bool,
        out_indices: Sequence[int],
        crop_pct: float = 0.875,
    ) -> None:
        stride = patch_size * 2 ** (len(dims) - 1)
        self.init_head(
            num_classes, dims[-1], global_pool, drop_rate, in_chans, img_size, stride, crop_pct
        )
        feature_info = [
            {"num_chs": dim, "reduction": patch_size * 2**i, "module": f"stages.{i}"}
            for i, dim in enumerate(dims)
        ]
        self.init_features(features_only, out_indices, feature_info)

    def pool_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.stride, self.img_size[1] // self.stride

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the last stage's normalised features (B, C, h, w)."""
        self.check_input(x)
        with kernel_scope(self.kernels):
            x = self.stem(x)
            for stage in self.stages:
                x = self._run_stage(stage, x)
            return self.norm(x).permute(0, 3, 1, 2)

    def _run_stage(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        x = stage.down(x)
        for block in stage.blocks:
            x = self.run(block, x)
        return stage.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if self.global_pool == "avg" else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled: (B, C) -> (B, classes). Unpooled (``global_pool=""``): the classifier at every
        position, (B, C, H, W) -> (B, classes, H, W), as timm's 1×1-conv heads give."""
        if self.global_pool:
            return super().forward_head(x, pre_logits)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x.movedim(1, -1)).movedim(-1, 1)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Any:
        """timm's API: stage outputs as NCHW (or NHWC) maps; ``norm`` applies the final norm to
        the last stage's. indices: int n = the last n stages, a sequence = those, None = all."""
        count = len(self.stages)
        wanted = intermediate_indices(self.family, indices, count, output_fmt)
        self.check_input(x)
        intermediates = []
        with kernel_scope(self.kernels):
            x = self.stem(x)
            last = max(wanted) if stop_early and wanted else count - 1
            for i, stage in enumerate(self.stages[: last + 1]):
                x = self._run_stage(stage, x)
                if i in wanted:
                    level = self.norm(x) if norm and i == count - 1 else x
                    intermediates.append(
                        level.permute(0, 3, 1, 2) if output_fmt == "NCHW" else level
                    )
            if intermediates_only:
                return intermediates
            return self.norm(x).permute(0, 3, 1, 2), intermediates

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {
            "stem": r"^stem",
            "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.\w+\.(\d+)",
        }
