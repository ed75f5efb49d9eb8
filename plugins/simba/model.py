"""SiMBA (Patro & Agneeswaran 2024, "SiMBA: Simplified Mamba-based Architecture for Vision and
Multivariate Time series"), as ``SiMBA`` in badripatro/Simba (classification/models/simba.py),
written channels-last:

    stem:    conv7×7/2 -> BN -> ReLU -> (conv3×3 -> BN -> ReLU) × 2 -> conv3×3/2 -> LN   (H/4, W/4)
    block:   x = x + drop_path(Mamba(LN(x)))          the tokens in row-major order (scan "causal")
             x = x + drop_path(EinFFT(LN(x)))         the channel mixer
    stage:   down (conv3×3/2 -> LN; the stem for stage 0) -> blocks -> LN (not after the last)
    head:    c = mean of the last stage's tokens
             c = c + Mamba(LN(c)); c = c + EinFFT(LN(c))          the "class block", on c alone
             logits = Linear(LN(c))  [+ 0.5 · max over tokens of aux_head(LN(tokens))]

The published models are trained with token labeling (Jiang et al. 2021), which adds an auxiliary
per-token head; at evaluation the official model returns ``head(c) + 0.5 · max_t aux(x_t)``.
``token_label=True`` adds that head and that output (and the paper's parameter counts include
it); the token-labeling loss itself needs dense labels from an annotator model and is not here.

The token mixer (``mixer=``, default "mamba" with d_state 64, d_conv 4, expand 2) walks the grid
with any registered scan (``scan=``); the channel mixer is any registered one (``channel_mixer=``,
default "einfft"). Initialisation as the official code: every Linear ~ N(0, .02) truncated with
zero bias (this includes the SSM's x_proj and dt_proj, so Δ starts at softplus(0)), LayerNorm
1 / 0, Conv2d ~ N(0, 2 / fan_out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mambaverse.api import create_mixer, get_mixer, list_mixers
from mambaverse.bounds import NonNegative, Positive, PositiveFloat, Rate
from mambaverse.errors import ConfigError
from mambaverse.plugins._vision.grid_mixer import build_grid_mixer
from mambaverse.plugins._vision.hierarchical import HierarchicalBackbone, build_stages
from mambaverse.plugins._vision.layers import DropPath, Permute, conv_downsample


class SiMBABlock(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): token mixer then channel mixer, each pre-norm with a residual."""

    def __init__(
        self,
        dim: int,
        token_mixer: nn.Module,
        channel_mixer: nn.Module,
        drop_path: float,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.norm1, self.token_mixer = nn.LayerNorm(dim), token_mixer  # MambaLayer's own LayerNorm
        self.norm2, self.channel_mixer = nn.LayerNorm(dim, eps=norm_eps), channel_mixer
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)
        tokens = tokens + self.drop_path(self.token_mixer(self.norm1(tokens), (H, W)))
        tokens = tokens + self.drop_path(self.channel_mixer(self.norm2(tokens)))
        return tokens.reshape(B, H, W, C)


class SiMBA(HierarchicalBackbone):
    """SiMBA. Config keys follow badripatro/Simba (``stem_hidden_dim``, ``embed_dims``,
    ``depths``) and timm (``img_size``, ``in_chans``, ``num_classes``, ``global_pool``,
    ``drop_rate``, ``drop_path_rate``, ``features_only``, ``out_indices``).

    d_state, d_conv, expand: the Mamba token mixer's SSM. scan / scan_options, mixer /
    mixer_config: the registered scan and token mixer. channel_mixer / channel_mixer_config: the
    registered channel mixer. global_pool: "token" (the class block on the mean token, as the
    paper), "avg" (the mean token) or "" (the last stage's map). norm_eps: of the LayerNorms
    outside the token mixer (1e-6 in the published models). token_label: add the auxiliary
    per-token head of token labeling (see the module docstring).
    """

    family = "simba"
    first_conv = "stem.0"
    global_pools = ("token", "avg", "")

    def __init__(
        self,
        img_size: Positive | tuple[int, int] = 224,
        in_chans: Positive = 3,
        num_classes: NonNegative = 1000,
        stem_hidden_dim: Positive = 32,
        embed_dims: Sequence[int] = (64, 128, 320, 448),
        depths: Sequence[int] = (3, 4, 6, 3),
        d_state: Positive = 64,
        d_conv: Positive = 4,
        expand: PositiveFloat = 2.0,
        scan: str = "causal",
        scan_options: dict[str, Any] | None = None,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        channel_mixer: str = "einfft",
        channel_mixer_config: dict[str, Any] | None = None,
        norm_eps: PositiveFloat = 1e-6,
        token_label: bool = False,
        global_pool: Literal["token", "avg", ""] = "token",
        drop_rate: Rate = 0.0,
        drop_path_rate: Rate = 0.1,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if len(embed_dims) != len(depths):
            raise ConfigError(
                f"simba: {len(embed_dims)} embed_dims for {len(depths)} stages (depths)"
            )
        self.kernels = kernels
        mamba_options = {
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "conv": "1d",
            "gate": True,
        }

        def token_mixer(dim: int) -> nn.Module:
            return build_grid_mixer(dim, scan, mixer, scan_options, mixer_config, mamba_options)

        def channel(dim: int) -> nn.Module:
            return build_channel_mixer(channel_mixer, dim, channel_mixer_config)

        self.stem = make_stem(in_chans, stem_hidden_dim, embed_dims[0])
        last = len(depths) - 1

        def block(stage: int, dim: int, drop_path: float) -> SiMBABlock:
            return SiMBABlock(dim, token_mixer(dim), channel(dim), drop_path, norm_eps)

        def stage_norm(stage: int, dim: int) -> nn.Module | None:
            return nn.LayerNorm(dim, eps=norm_eps) if stage < last else None

        self.stages = build_stages(
            embed_dims, depths, drop_path_rate, conv_downsample, block, stage_norm
        )
        self.norm = nn.Identity()  # the last stage's LayerNorm comes after the class block
        dim = embed_dims[-1]
        self.class_norm1, self.class_mixer = nn.LayerNorm(dim), token_mixer(dim)
        self.class_norm2, self.class_channel_mixer = nn.LayerNorm(dim, eps=norm_eps), channel(dim)
        self.head_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.token_label = token_label
        self.init_pyramid(
            list(embed_dims),
            4,
            num_classes,
            global_pool,
            drop_rate,
            in_chans,
            img_size,
            features_only,
            out_indices,
        )
        self.aux_head = (
            nn.Linear(dim, num_classes) if token_label and self.num_classes > 0 else None
        )
        self.apply(simba_init)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        logits = super().forward_head(x, pre_logits)
        if pre_logits or self.aux_head is None or self.global_pool == "":
            return logits
        tokens = self.head_norm(x.flatten(2).transpose(1, 2))  # (B, h·w, C)
        return logits + 0.5 * self.aux_head(tokens).max(dim=1).values

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if getattr(self, "token_label", False):
            device = self.head_norm.weight.device
            self.aux_head = (
                nn.Linear(self.num_features, num_classes, device=device)
                if num_classes > 0
                else None
            )

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C): the mean token, through the class block for "token"."""
        if self.global_pool == "":
            return x
        cls = x.flatten(2).mean(dim=2)[:, None]  # (B, 1, C)
        if self.global_pool == "token":
            cls = cls + self.class_mixer(self.class_norm1(cls), (1, 1))
            cls = cls + self.class_channel_mixer(self.class_norm2(cls))
        return self.head_norm(cls[:, 0])


def build_channel_mixer(name: str, dim: int, config: dict[str, Any] | None) -> nn.Module:
    """The registered channel mixer ``name`` (an unknown name lists the nearest ones)."""
    if get_mixer(name).kind != "channel":
        raise ConfigError(
            f"mixer {name!r} mixes tokens; a channel mixer is needed here, one of: "
            + ", ".join(list_mixers("channel"))
        )
    return create_mixer(name, dim, **(config or {}))


def make_stem(in_chans: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SiMBA's (and SVT's) convolutional stem, stride 4, ending channels-last."""
    return nn.Sequential(
        nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(hidden_dim),
        nn.ReLU(),
        nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden_dim),
        nn.ReLU(),
        nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden_dim),
        nn.ReLU(),
        nn.Conv2d(hidden_dim, out_dim, 3, stride=2, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim),
    )


def simba_init(module: nn.Module) -> None:
    """The official ``_init_weights``, applied to every module."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = (
            module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        )
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
