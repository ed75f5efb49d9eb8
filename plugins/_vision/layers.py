"""Small layers the vision backbones share: stochastic depth, layout helpers, an initialiser."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.errors import ConfigError


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a sample's residual branch with
    probability ``drop_prob`` and scale the kept ones by 1 / (1 - drop_prob); identity in eval."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def embed_patches(proj: nn.Conv2d, images: torch.Tensor) -> torch.Tensor:
    """A patch embedding (a Conv2d whose stride is its kernel, no padding) as one GEMM:
    images (B, C, H, W) -> tokens (B, H/p · W/p, E), patches in row-major order.

    The same function as ``proj(images).flatten(2).transpose(1, 2)``; the patches are cut out by
    one copy and multiplied by the flattened weight (H100, bf16, 16 × 3 × 1024² images: cuDNN's
    convolution took 1.15 ms, this 0.24 ms; docs/benchmarks.md, run S10).
    """
    (ph, pw), (e, c) = proj.kernel_size, proj.weight.shape[:2]
    if (
        proj.stride != (ph, pw)
        or proj.padding != (0, 0)
        or proj.dilation != (1, 1)
        or proj.groups != 1
    ):
        return proj(images).flatten(2).transpose(1, 2)
    batch, _, height, width = images.shape
    patches = images.reshape(batch, c, height // ph, ph, width // pw, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, c * ph * pw)  # (B, N, C·p·p)
    return F.linear(patches, proj.weight.reshape(e, -1), proj.bias)


def drop_path_rates(rate: float, count: int) -> list[float]:
    """Linearly increasing rates 0 .. ``rate`` over ``count`` blocks (the usual decay rule)."""
    return [rate * i / (count - 1) for i in range(count)] if count > 1 else [0.0] * count


def lecun_normal_(weight: torch.Tensor) -> None:
    """Truncated normal with variance 1 / fan_in (the truncation at ±2σ is compensated)."""
    fan_in = weight[0].numel()
    # std of a unit normal truncated to [-2, 2] is 0.87962566; divide it out so the variance is 1/fan_in
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def stage_widths(dims: int | Sequence[int], stages: int, family: str) -> list[int]:
    """One width per stage: ``dims`` doubled per stage, or the given list."""
    if isinstance(dims, int):
        return [dims * 2**i for i in range(stages)]
    if len(dims) != stages:
        raise ConfigError(f"{family}: dims has {len(dims)} widths for {stages} stages (depths)")
    return list(dims)


class ChannelsFirst(nn.Module):
    """Run ``module`` (a conv) on channels-last input: (B, H, W, C) -> NCHW -> module -> NHWC."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module, for nn.Sequential."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def conv_downsample(dim: int, out_dim: int) -> nn.Sequential:
    """Channels-last downsampling by 2: conv3×3 stride 2, then LayerNorm (VMamba's "v3",
    SiMBA's ``DownSamples``)."""
    return nn.Sequential(
        ChannelsFirst(nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)), nn.LayerNorm(out_dim)
    )
