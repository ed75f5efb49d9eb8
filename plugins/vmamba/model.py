"""VMamba (Liu et al. 2024, "VMamba: Visual State Space Model"), as ``VSSM`` in MzeroMiko/VMamba
(classification/models/vmamba.py) with the published v2 settings (``forward_type="v05_noz"``,
``patchembed_version="v2"``, ``downsample_version="v3"``), written channels-last:

    stem:   conv3×3/2 (C/2) -> LN -> GELU -> conv3×3/2 (C) -> LN          (B, H/4, W/4, C)
    VSS block:  x = x + drop_path(SS2D(LN(x)))
                x = x + drop_path(MLP(LN(x)))                              MLP: C -> 4C -> C, GELU
    SS2D:   in_proj (no gate) -> dwconv3×3 -> silu -> one SSM per walk of the cross scan
            (row-major, column-major, both reversed) -> merge (sum) -> LN -> out_proj
    down:   conv3×3/2 (C -> 2C) -> LN
    head:   LN -> global average pool -> Linear

SS2D is the "mamba" token mixer on the "cross2d" scan; any registered scan (``scan=``) and token
mixer (``mixer=``) can take its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mambaverse.bounds import NonNegative, NonNegativeFloat, Positive, PositiveFloat, Rate
from mambaverse.errors import ConfigError
from mambaverse.plugins._vision.backbone import init_weights
from mambaverse.plugins._vision.grid_mixer import build_grid_mixer
from mambaverse.plugins._vision.hierarchical import HierarchicalBackbone, build_stages
from mambaverse.plugins._vision.layers import DropPath, Permute, conv_downsample, stage_widths
from mambaverse.plugins._vision.scan_mamba import ss2d_options
from mambaverse.plugins.mixers.mamba import SelectiveSSM
from mambaverse.plugins.mixers.mlp import MLP


class VSSBlock(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): token mixer and MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm, self.mixer = nn.LayerNorm(dim), mixer
        self.norm2 = nn.LayerNorm(dim) if mlp_ratio > 0 else None
        self.mlp = (
            MLP(dim, int(dim * mlp_ratio), activation="gelu", bias=True) if mlp_ratio > 0 else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        tokens = tokens + self.drop_path(self.mixer(self.norm(tokens), (H, W)))
        if self.mlp is not None:
            tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens.reshape(B, H, W, C)


class VMamba(HierarchicalBackbone):
    """VMamba. Config keys follow MzeroMiko/VMamba's ``VSSM`` (``dims``, ``depths``,
    ``ssm_d_state``, ``ssm_ratio``, ``ssm_dt_rank``, ``ssm_conv``, ``ssm_conv_bias``,
    ``mlp_ratio``) and timm (``img_size``, ``in_chans``, ``num_classes``, ``global_pool``,
    ``drop_rate``, ``drop_path_rate``, ``features_only``, ``out_indices``).

    dims: the first stage's width (doubled per stage) or one width per stage. ssm_gate: gate the
    SSM output with silu(z) (False = the published "noz" setting). scan / scan_options, mixer /
    mixer_config: the registered scan and token mixer of every block (for "mamba" the ssm_* keys
    set its SSM). patch_size: an even number >= 4 (the stem is two stride-patch_size/2 convs).
    """

    family = "vmamba"

    def __init__(
        self,
        img_size: Positive | tuple[int, int] = 224,
        patch_size: Positive = 4,
        in_chans: Positive = 3,
        num_classes: NonNegative = 1000,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 9, 2),
        ssm_d_state: Positive = 1,
        ssm_ratio: PositiveFloat = 2.0,
        ssm_dt_rank: Positive | Literal["auto"] = "auto",
        ssm_conv: Positive = 3,
        ssm_conv_bias: bool = False,
        ssm_gate: bool = False,
        mlp_ratio: NonNegativeFloat = 4.0,
        scan: str = "cross2d",
        scan_options: dict[str, Any] | None = None,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        global_pool: Literal["avg", ""] = "avg",
        drop_rate: Rate = 0.0,
        drop_path_rate: Rate = 0.1,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        dims = stage_widths(dims, len(depths), self.family)
        if patch_size < 4 or patch_size % 2:
            raise ConfigError(f"vmamba: patch_size must be an even number >= 4, got {patch_size}")
        self.kernels = kernels
        self.stem = make_stem(in_chans, dims[0], patch_size)
        mamba_options = ss2d_options(
            ssm_d_state, ssm_conv, ssm_ratio, ssm_dt_rank, conv_bias=ssm_conv_bias, gate=ssm_gate
        )

        def block(stage: int, dim: int, drop_path: float) -> VSSBlock:
            grid_mixer = build_grid_mixer(
                dim, scan, mixer, scan_options, mixer_config, mamba_options
            )
            return VSSBlock(dim, grid_mixer, mlp_ratio, drop_path)

        self.stages = build_stages(dims, depths, drop_path_rate, conv_downsample, block)
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


def make_stem(in_chans: int, dim: int, patch_size: int) -> nn.Sequential:
    """VMamba's "v2" patch embedding: two overlapping convs of stride patch_size / 2."""
    stride = patch_size // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, stride + 1, stride=stride, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim // 2),
        Permute(0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, stride + 1, stride=stride, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(dim),
    )
