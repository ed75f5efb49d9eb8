"""EfficientVMamba (Pei et al. 2024, "EfficientVMamba: Atrous Selective Scan for Light Weight
Visual Mamba"), as ``EfficientVSSM`` in TerryPei/EfficientVMamba
(classification/models/vmamba_efficient.py), written channels-last:

    stem:        conv p×p/p -> LN                                         (B, H/p, W/p, C)
    EVSS block (first two stages):
        y = LN(x)
        x = x + drop_path(SE(ES2D(y)) + SE(ConvBranch(y)))      one SE module for both branches
        ES2D:        in_proj (x, z) -> dwconv3×3 -> silu -> one SSM per walk of the atrous scan
                     (four skip-sampled sub-grids) -> merge -> LN -> · silu(z) -> out_proj
        ConvBranch:  dwconv3×3 -> BatchNorm -> GELU -> conv1×1
        SE:          x · sigmoid(W2 gelu(W1 mean_hw(LN(x))))         (``BiAttn``, ratio 1/8)
    inverted residual (last two stages), MobileNetV2 with squeeze-excitation:
        x = x + drop_path(BN(conv1×1(SE(relu(BN(dwconv3×3(relu(BN(conv1×1(x, 4C)))))))))
    down:        2×2 patch merging: concat -> LN(4C) -> Linear(4C -> 2C, no bias)
    head:        LN -> global average pool -> Linear

ES2D is the "mamba" token mixer on the "atrous" scan; ``scan=`` and ``mixer=`` replace them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import NonNegative, Positive, PositiveFloat, Rate
from mambaverse.plugins._vision.backbone import init_weights
from mambaverse.plugins._vision.grid_mixer import build_grid_mixer
from mambaverse.plugins._vision.hierarchical import HierarchicalBackbone, build_stages
from mambaverse.plugins._vision.layers import DropPath, Permute, stage_widths
from mambaverse.plugins._vision.scan_mamba import ss2d_options
from mambaverse.plugins.mixers.mamba import SelectiveSSM


class ChannelSE(nn.Module):
    """EfficientVMamba's ``BiAttn``: channel gates from the LayerNorm-ed global mean (NHWC)."""

    def __init__(self, dim: int, ratio: float = 0.125) -> None:
        super().__init__()
        reduced = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce, self.channel_select = nn.Linear(dim, reduced), nn.Linear(reduced, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.norm(x).mean(dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        gate = torch.sigmoid(self.channel_select(F.gelu(self.global_reduce(context))))
        return x * gate


class EVSSBlock(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): the SSM branch and the local conv branch, gated and added."""

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float) -> None:
        super().__init__()
        self.norm, self.mixer = nn.LayerNorm(dim), mixer
        self.conv_branch = nn.Sequential(
            Permute(0, 3, 1, 2),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
            Permute(0, 2, 3, 1),
        )
        self.se = ChannelSE(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        y = self.norm(x)
        global_branch = self.mixer(y.reshape(B, H * W, C), (H, W)).reshape(B, H, W, C)
        local_branch = self.conv_branch(y)
        return x + self.drop_path(self.se(global_branch) + self.se(local_branch))


class InvertedResidual(nn.Module):
    """MobileNetV2's block with squeeze-excitation (``InvertedResidual`` of lib/models/operations.py
    with expand_ratio 4, se_ratio 1/8, ReLU), on channels-last input."""

    def __init__(
        self, dim: int, drop_path: float, expand_ratio: int = 4, se_ratio: float = 0.125
    ) -> None:
        super().__init__()
        mid = dim * expand_ratio
        self.conv_pw = nn.Sequential(
            nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        )
        self.conv_dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
        )
        reduced = max(1, int(mid * se_ratio))
        self.se_reduce, self.se_expand = nn.Conv2d(mid, reduced, 1), nn.Conv2d(reduced, mid, 1)
        self.conv_pw2 = nn.Sequential(nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(self.conv_pw(x.permute(0, 3, 1, 2)))
        gate = torch.sigmoid(
            self.se_expand(F.relu(self.se_reduce(y.mean(dim=(2, 3), keepdim=True))))
        )
        y = self.conv_pw2(y * gate).permute(0, 2, 3, 1)
        return x + self.drop_path(y)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, out): the 2×2 neighbours concatenated (order (0,0), (1,0),
    (0,1), (1,1)), LayerNorm, then a Linear without bias."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))


class EfficientVMamba(HierarchicalBackbone):
    """EfficientVMamba. Config keys follow TerryPei/EfficientVMamba (``dims``, ``depths``,
    ``d_state``, ``ssm_ratio``, ``dt_rank``, ``step_size``, ``mlp_ratio``) and timm
    (``img_size``, ``patch_size``, ``in_chans``, ``num_classes``, ``global_pool``,
    ``drop_rate``, ``drop_path_rate``, ``features_only``, ``out_indices``).

    evss_stages: how many leading stages use EVSS blocks (2 in the paper); the rest use inverted
    residuals. step_size: the atrous scan's step (passed as scan_options={"step": ...} when the
    scan is "atrous"). scan / scan_options, mixer / mixer_config: the SSM branch's registered scan
    and token mixer (for "mamba" the SSM keys above set it).
    """

    family = "efficientvmamba"

    def __init__(
        self,
        img_size: Positive | tuple[int, int] = 224,
        patch_size: Positive = 4,
        in_chans: Positive = 3,
        num_classes: NonNegative = 1000,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 9, 2),
        d_state: Positive = 16,
        ssm_ratio: PositiveFloat = 2.0,
        dt_rank: Positive | Literal["auto"] = "auto",
        ssm_conv: Positive = 3,
        step_size: Positive = 2,
        evss_stages: NonNegative = 2,
        scan: str = "atrous",
        scan_options: dict[str, Any] | None = None,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        global_pool: Literal["avg", ""] = "avg",
        drop_rate: Rate = 0.0,
        drop_path_rate: Rate = 0.2,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        dims = stage_widths(dims, len(depths), self.family)
        self.kernels = kernels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dims[0]),
        )
        if scan == "atrous":
            scan_options = {"step": step_size, **(scan_options or {})}
        mamba_options = ss2d_options(
            d_state, ssm_conv, ssm_ratio, dt_rank, conv_bias=True, gate=True
        )

        def block(stage: int, dim: int, drop_path: float) -> nn.Module:
            if stage >= evss_stages:
                return InvertedResidual(dim, drop_path)
            grid_mixer = build_grid_mixer(
                dim, scan, mixer, scan_options, mixer_config, mamba_options
            )
            return EVSSBlock(dim, grid_mixer, drop_path)

        self.stages = build_stages(dims, depths, drop_path_rate, PatchMerging, block)
        self.norm = nn.LayerNorm(dims[-1])
        self.init_pyramid(
            dims,
            patch_size,
            num_classes,
            global_pool,
            drop_rate,
            in_chans,
            img_size,
            features_only,
            out_indices,
        )
        init_weights(self, skip=(SelectiveSSM,))
