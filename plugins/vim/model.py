"""Vision Mamba (Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model"), as ``VisionMamba`` in hustvl/Vim (vim/models_mamba.py) with
its published settings: ``bimamba_type="v2"``, ``if_divide_out``, ``use_middle_cls_token``,
``if_abs_pos_embed``, RMSNorm, residual in float32.

    tokens   = PatchEmbed(image)                              (B, N, C), N = (H/p)·(W/p), row-major
    tokens   = insert(tokens, cls, at N // 2) + pos_embed     (B, N + 1, C)
    for each block:                                           "add -> norm -> mixer", as mamba_ssm's Block
        residual = residual + drop_path(hidden)               (residual = tokens for the first block)
        hidden   = mixer(RMSNorm(residual))                   the token mixer walks the patch grid
                                                              (add + norm: one fused op, add_rms_norm)
    features = RMSNorm(residual + drop_path(hidden))          (B, N + 1, C)
    logits   = head(features[:, N // 2])                      global_pool="token": the class token

The token mixer is any registered one (``mixer=``) walking the grid with any registered scan
(``scan=``); the default, mixer "mamba" with scan "bidirectional", is Vim's bidirectional block
(shared in/out projections, one SSM per direction, the mean of the two directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from mambaverse.bounds import NonNegative, Positive, PositiveFloat, Rate
from mambaverse.plugins._vision.backbone import (
    VisionBackbone,
    init_weights,
    intermediate_indices,
)
from mambaverse.plugins._vision.grid_mixer import build_grid_mixer
from mambaverse.plugins._vision.layers import (
    DropPath,
    drop_path_rates,
    embed_patches,
    lecun_normal_,
)
from mambaverse.plugins.mixers.base import kernel_scope
from mambaverse.plugins.mixers.mamba import SelectiveSSM
from mambaverse.plugins.mixers.norms import RMSNorm, add_and_norm

from .pos_embed import resize_pos_embed


class Block(nn.Module):
    """mamba_ssm's pre-norm block with the residual stream carried separately."""

    def __init__(
        self, dim: int, mixer: nn.Module, norm: nn.Module, drop_path: float, residual_in_fp32: bool
    ) -> None:
        super().__init__()
        self.mixer, self.norm = mixer, norm
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        grid: tuple[int, int],
        cls_index: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:  # the first block's input is the tokens, not a branch
            hidden = self.drop_path(hidden)
        wide = torch.promote_types(hidden.dtype, torch.float32) if self.residual_in_fp32 else None
        hidden, residual = add_and_norm(self.norm, hidden, residual, residual_dtype=wide)
        return self.mixer(hidden, grid, cls_index), residual


class VisionMamba(VisionBackbone):
    """Vision Mamba. Config keys follow hustvl/Vim (``embed_dim``, ``depth``, ``d_state``,
    ``rms_norm``, ``residual_in_fp32``, ``if_abs_pos_embed``) and timm (``img_size``,
    ``patch_size``, ``in_chans``, ``num_classes``, ``global_pool``, ``drop_rate``,
    ``drop_path_rate``, ``features_only``, ``out_indices``).

    scan / scan_options: the registered scan walking the patch grid. mixer / mixer_config: the
    registered token mixer and its config; for "mamba", d_state, d_conv and expand set its SSM.
    kernels: op -> impl for this model (e.g. ``{"selective_scan": "reference"}``).
    global_pool: "token" (the class token), "avg" (mean of the patch tokens) or "" (all tokens).
    Any image size that ``patch_size`` divides works; the position embeddings are resized.
    """

    family = "vim"
    global_pools = ("token", "avg", "")

    def __init__(
        self,
        img_size: Positive | tuple[int, int] = 224,
        patch_size: Positive = 16,
        in_chans: Positive = 3,
        num_classes: NonNegative = 1000,
        embed_dim: Positive = 192,
        depth: Positive = 24,
        d_state: Positive = 16,
        d_conv: Positive = 4,
        expand: PositiveFloat = 2.0,
        scan: str = "bidirectional",
        scan_options: dict[str, Any] | None = None,
        mixer: str = "mamba",
        mixer_config: dict[str, Any] | None = None,
        rms_norm: bool = True,
        norm_epsilon: PositiveFloat = 1e-5,
        residual_in_fp32: bool = True,
        if_abs_pos_embed: bool = True,
        global_pool: Literal["token", "avg", ""] = "token",
        drop_rate: Rate = 0.0,
        drop_path_rate: Rate = 0.1,
        features_only: bool = False,
        out_indices: Sequence[int] = (-4, -3, -2, -1),
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.kernels = patch_size, embed_dim, kernels
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.init_head(
            num_classes, embed_dim, global_pool, drop_rate, in_chans, img_size, patch_size, 0.875
        )
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim)) if if_abs_pos_embed else None
        )
        self.pos_drop = nn.Dropout(drop_rate)

        def norm() -> nn.Module:
            return (
                RMSNorm(embed_dim, eps=norm_epsilon)
                if rms_norm
                else nn.LayerNorm(embed_dim, eps=norm_epsilon)
            )

        mamba_options = {
            "d_state": d_state,
            "d_conv": d_conv,
            "expand": expand,
            "conv": "1d",
            "gate": True,
            "divide_out": True,
        }
        # Block i adds the previous block's output, so it carries that block's drop-path rate.
        rates = [0.0, *drop_path_rates(drop_path_rate, depth)]
        self.layers = nn.ModuleList(
            Block(
                embed_dim,
                build_grid_mixer(embed_dim, scan, mixer, scan_options, mixer_config, mamba_options),
                norm(),
                rates[i],
                residual_in_fp32,
            )
            for i in range(depth)
        )
        self.drop_path = DropPath(drop_path_rate)
        self.norm_f = norm()
        feature_info = [
            {"num_chs": embed_dim, "reduction": patch_size, "module": f"layers.{i}"}
            for i in range(depth)
        ]
        self.init_features(features_only, out_indices, feature_info)
        self._init_vim_weights(depth)

    def _init_vim_weights(self, depth: int) -> None:
        """As hustvl/Vim: LeCun-normal patch conv, N(0, .02) tokens and head; then mamba_ssm's
        init: Linear biases 0 and out_proj / fc2 weights rescaled by 1/sqrt(depth)."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            init_weights(self.head)
        skipped = {
            id(m) for s in self.modules() if isinstance(s, SelectiveSSM) for m in s.modules()
        }
        for module in self.modules():
            if id(module) in skipped:
                continue
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            for name in ("out_proj", "fc2"):
                child = getattr(module, name, None)
                if isinstance(child, nn.Linear):
                    nn.init.kaiming_uniform_(child.weight, a=5**0.5)
                    with torch.no_grad():
                        child.weight /= depth**0.5

    # -- tokens ---------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], int]:
        """Images -> tokens (B, N + 1, C) with the class token at index N // 2, grid, that index."""
        H, W = self.check_input(x)
        grid = (H // self.patch_size, W // self.patch_size)
        tokens = embed_patches(self.patch_embed.proj, x)  # (B, N, C), row-major
        cls_index = tokens.shape[1] // 2
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([tokens[:, :cls_index], cls, tokens[:, cls_index:]], dim=1)
        if self.pos_embed is not None:
            tokens = tokens + resize_pos_embed(self.pos_embed, self.grid, grid)
        return self.pos_drop(tokens), grid, cls_index

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens (B, N + 1, C), the class token at index N // 2."""
        with kernel_scope(self.kernels):
            hidden, grid, cls_index = self.embed(x)
            residual = None
            for layer in self.layers:
                hidden, residual = self.run(layer, hidden, residual, grid, cls_index)
            return self.final_norm(hidden, residual)

    def final_norm(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        if residual is not None:
            hidden = self.drop_path(hidden)
        return add_and_norm(self.norm_f, hidden, residual)[0]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        cls_index = (tokens.shape[1] - 1) // 2
        if self.global_pool == "token":
            return tokens[:, cls_index]
        if self.global_pool == "avg":
            return torch.cat([tokens[:, :cls_index], tokens[:, cls_index + 1 :]], dim=1).mean(1)
        return tokens

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> Any:
        """timm's API: the residual stream after the chosen blocks as (B, C, H, W) maps (NCHW) or
        (B, H, W, C) (NHWC); with ``return_prefix_tokens`` each is (map, class token (B, 1, C)).
        indices: an int n takes the last n blocks, a sequence those blocks, None all of them."""
        depth = len(self.layers)
        wanted = intermediate_indices(self.family, indices, depth, output_fmt)
        intermediates = []
        with kernel_scope(self.kernels):
            hidden, grid, cls_index = self.embed(x)
            residual = None
            last = max(wanted) if stop_early and wanted else depth - 1
            for i, layer in enumerate(self.layers[: last + 1]):
                hidden, residual = self.run(layer, hidden, residual, grid, cls_index)
                if i in wanted:
                    stream = residual + hidden
                    if norm:
                        stream = self.norm_f(stream.to(self.norm_f.weight.dtype))
                    intermediates.append(
                        self._as_map(stream, grid, cls_index, output_fmt, return_prefix_tokens)
                    )
            if intermediates_only:
                return intermediates
            return self.final_norm(hidden, residual), intermediates

    @staticmethod
    def _as_map(
        stream: torch.Tensor, grid: tuple[int, int], cls_index: int, output_fmt: str, with_cls: bool
    ) -> Any:
        cells = torch.cat([stream[:, :cls_index], stream[:, cls_index + 1 :]], dim=1)
        maps = cells.reshape(stream.shape[0], *grid, -1)  # (B, H, W, C)
        if output_fmt == "NCHW":
            maps = maps.permute(0, 3, 1, 2)
        return (maps, stream[:, cls_index : cls_index + 1]) if with_cls else maps

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^cls_token|^pos_embed|^patch_embed", "blocks": r"^layers\.(\d+)"}
