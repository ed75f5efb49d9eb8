"""Mamba over the K walks of a 2-D scan: the token mixer of Vim, VMamba and EfficientVMamba.

One input projection and one output projection are shared; each walk k gets its own SSM path
(``SelectiveSSM`` of the mamba mixer: conv1d, x_proj, dt_proj, A_log, D and the selective scan)::

    x, z   = in_proj(u)                           u: (B, L, dim) -> (B, L, d_inner) [× 2 with a gate]
    x      = silu(dwconv2d(x))                    only with conv="2d" (VMamba, EfficientVMamba)
    y_k    = SSM_k(walk_k(x))                     the scan's K sequences, one SSM each
    y      = unwalk(y_1 .. y_K)                   the scan's merge: each token summed over the walks
                                                  (divided by how many walks visit it: divide_out)
    y      = LayerNorm(y)                         only with out_norm (VMamba, EfficientVMamba)
    out    = out_proj(y * silu(z))                the gate only with gate=True (Vim, EfficientVMamba)

When each walk visits each token exactly once (bidirectional, cross2d, causal) the K SSM paths
run stacked: the K SSMs are one ``selective_ssms`` call on the tokens — walk_k and the causal
conv one ``conv_walks`` pass into (B, K, d_inner, L) (on CUDA L padded to a multiple of
``SCAN_STEPS_MULTIPLE``), one scan whose B, C have one group per walk —, unwalk one
``merge_walks`` back (with the gate when no out_norm comes between); the
other scans (atrous: padded grids) take the per-walk path.

Settings of the papers:

- Vim ``bimamba_type="v2"``: scan "bidirectional", conv="1d" (d_conv 4), gate, divide_out
  (``if_divide_out``: the mean of the two directions), no out_norm. The official code gates each
  direction inside its scan; silu(z) is the same per token in both, so gating the merged sum is
  the same function.
- VMamba ``forward_type="v05_noz"``: scan "cross2d", conv="2d" (3×3, no bias), no gate, out_norm.
- EfficientVMamba ES2D: scan "atrous", conv="2d" (3×3, bias), gate, out_norm.
- with scan "causal" and conv="1d" this is exactly the 1-D Mamba block.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import NonNegativeFloat, Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.kernels import merge_walks
from mambaverse.plugins.mixers.base import kernel_scope
from mambaverse.plugins.mixers.mamba import SelectiveSSM, selective_ssms

from .walker import Walker, join_class_token, split_class_token

CONVS = ("1d", "2d", "none")
# Per device type, the stacked scan's sequences are padded to a multiple of this many steps. On
# CUDA: rows of 4097 tokens (Vim at 1024 px: 64² patches + the class token) are misaligned, and
# the Triton scan then loads them element by element (H100: 4.7 ms per scan at batch 16 instead
# of 0.96). Not on the CPU: the reference scan's cost grows with every step (the digits demo's
# 17-token sequences would take 32 steps, its training 1.65x longer).
SCAN_STEPS_MULTIPLE = {"cuda": 16}


def ss2d_options(
    d_state: int,
    d_conv: int,
    expand: float,
    dt_rank: int | Literal["auto"],
    conv_bias: bool,
    gate: bool,
) -> dict[str, object]:
    """:class:`ScanMamba` options of VMamba's SS2D and EfficientVMamba's ES2D: the depthwise conv
    on the grid and the LayerNorm on the merged SSM output; they differ in the conv's bias and the
    gate."""
    return {
        "d_state": d_state,
        "d_conv": d_conv,
        "expand": expand,
        "dt_rank": dt_rank,
        "conv": "2d",
        "conv_bias": conv_bias,
        "gate": gate,
        "out_norm": True,
    }


class ScanMamba(nn.Module):
    """(B, L, dim) tokens of an H×W grid (+ a class token) -> (B, L, dim).

    d_state, d_conv, expand, dt_rank ("auto" = ceil(dim / 16)), dt_min, dt_max, dt_init_floor,
    conv_bias, bias: as the mamba mixer. conv: "1d" (causal, along each walk), "2d" (depthwise
    d_conv×d_conv on the grid, before the walks) or "none". gate, out_norm, divide_out: see the
    module docstring. kernels: op -> impl for this mixer.
    """

    def __init__(
        self,
        dim: int,
        walker: Walker,
        d_state: Positive = 16,
        d_conv: Positive = 4,
        expand: PositiveFloat = 2.0,
        dt_rank: Positive | Literal["auto"] = "auto",
        dt_min: PositiveFloat = 0.001,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: NonNegativeFloat = 1e-4,
        conv: Literal["1d", "2d", "none"] = "1d",
        conv_bias: bool = True,
        bias: bool = False,
        gate: bool = True,
        out_norm: bool = False,
        divide_out: bool = False,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if conv not in CONVS:
            raise ConfigError(f"scan mamba: conv must be one of {', '.join(CONVS)}, got {conv!r}")
        if dt_rank == "auto":
            dt_rank = math.ceil(dim / 16)
        self.walker, self.gate, self.divide_out = walker, gate, divide_out
        self.kernels = dict(kernels) if kernels else None
        self.d_inner = d_inner = int(expand * dim)
        self.in_proj = nn.Linear(dim, d_inner * (2 if gate else 1), bias=bias)
        self.conv2d = (
            nn.Conv2d(
                d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
            )
            if conv == "2d"
            else None
        )
        self.ssms = nn.ModuleList(
            SelectiveSSM(
                d_inner,
                d_state,
                d_conv if conv == "1d" else 0,
                dt_rank,
                dt_min=dt_min,
                dt_max=dt_max,
                dt_init_floor=dt_init_floor,
                conv_bias=conv_bias,
            )
            for _ in range(walker.num_walks)
        )
        self.out_norm = nn.LayerNorm(d_inner) if out_norm else None
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], cls_index: int | None = None
    ) -> torch.Tensor:
        expected = grid[0] * grid[1] + (cls_index is not None)
        if tokens.dim() != 3 or tokens.shape[1] != expected:
            cls = " + a class token" if cls_index is not None else ""
            raise ValueError(
                f"scan mamba: a {grid[0]}×{grid[1]} grid{cls} is (batch, {expected}, channels) "
                f"tokens, got {tuple(tokens.shape)}"
            )
        with kernel_scope(self.kernels):
            multiple = SCAN_STEPS_MULTIPLE.get(tokens.device.type, 1)
            orders = self.walker.token_orders(grid, cls_index, tokens.device, multiple)
            if orders is None:
                return self._forward_walks(tokens, grid, cls_index)
            return self._forward_stacked(tokens, grid, cls_index, *orders)

    def _forward_walks(
        self, tokens: torch.Tensor, grid: tuple[int, int], cls_index: int | None
    ) -> torch.Tensor:
        """Any scan (padding, repeats): through the walker, one SSM call per walk, on (B, L, C)."""
        xz = self.in_proj(tokens)
        x, z = xz.chunk(2, dim=-1) if self.gate else (xz, None)
        if self.conv2d is not None:
            x = F.silu(self._conv_grid(x.transpose(1, 2), grid, cls_index)).transpose(1, 2)
        walks = self.walker.walk(x, grid, cls_index)  # (B, K, L_walk, d_inner)
        y = torch.stack(
            [
                ssm(seq.transpose(1, 2)).transpose(1, 2)
                for ssm, seq in zip(self.ssms, walks.unbind(1))
            ],
            dim=1,
        )
        y = self.walker.unwalk(y, grid, cls_index, average=self.divide_out)
        return self._project_out(y.to(tokens.dtype), z, channel_dim=-1)

    def _forward_stacked(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        cls_index: int | None,
        order: torch.Tensor,
        inverse: torch.Tensor,
    ) -> torch.Tensor:
        """When each walk visits each token once (Vim's, VMamba's scans): one pass into the
        walks, the K SSMs as one scan, one gather back — the function of :meth:`_forward_walks`
        without its per-walk slicing, concatenation and stacking. Channels-major (B, C, L)
        throughout, so that both gathers move contiguous rows; in and out projections are plain
        GEMMs on the channels-outermost storage."""
        xz = _linear_to_channels(self.in_proj, tokens)  # (B, d_inner [× 2], L)
        x, z = xz.chunk(2, dim=1) if self.gate else (xz, None)
        if self.conv2d is not None:
            x = F.silu(self._conv_grid(x, grid, cls_index))
        y = selective_ssms(self.ssms, x, order, inverse)  # (B, K, d_inner, steps)
        # Without a norm between them, the sum over walks and the gate are one pass.
        gate = z if self.out_norm is None else None
        scale = 1 / order.shape[0] if self.divide_out else 1.0  # the mean over the K walks
        y = merge_walks(y, order, inverse, scale=scale, gate=gate)
        return self._project_out(y.to(tokens.dtype), None if gate is not None else z, channel_dim=1)

    def _project_out(
        self, y: torch.Tensor, z: torch.Tensor | None, channel_dim: int
    ) -> torch.Tensor:
        """out_proj(out_norm(y) · silu(z)) -> (B, L, dim); y and z hold their channels on
        ``channel_dim`` (-1: (B, L, d_inner), 1: (B, d_inner, L))."""
        if self.out_norm is not None:
            y = self.out_norm(y.movedim(channel_dim, -1)).movedim(-1, channel_dim)
        if z is not None:
            y = F.silu(z) * y  # z's layout first: the product takes it (channels-outermost)
        if channel_dim == -1:
            return self.out_proj(y)
        return _linear_from_channels(self.out_proj, y)

    def _conv_grid(
        self, x: torch.Tensor, grid: tuple[int, int], cls_index: int | None
    ) -> torch.Tensor:
        """The depthwise 2-D conv over the grid's cells of x (B, d_inner, L); a class token has
        no cell and skips it."""
        cells, cls = split_class_token(x.transpose(1, 2), cls_index)  # (B, H·W, d_inner)
        B, (H, W) = x.shape[0], grid
        maps = self.conv2d(cells.transpose(1, 2).reshape(B, -1, H, W))  # (B, d_inner, H, W)
        return join_class_token(maps.flatten(2).transpose(1, 2), cls, cls_index).transpose(1, 2)


def _linear_to_channels(linear: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """``linear`` on tokens (B, L, C_in) -> (B, C_out, L), stored channels-outermost ((C_out, B,
    L) in memory): one plain GEMM, and every (batch, channel) row of L contiguous. (A batched GEMM
    with the weight broadcast over B gives the same layout, but cuBLAS ran it 3-5x slower.)"""
    if not _plain(linear):
        return linear(tokens).transpose(1, 2)
    batch, length, _ = tokens.shape
    rows = tokens.reshape(batch * length, -1).T  # (C_in, B·L)
    if linear.bias is None:
        y = linear.weight @ rows
    else:
        y = torch.addmm(linear.bias[:, None], linear.weight, rows)
    return y.view(-1, batch, length).transpose(0, 1)


def _linear_from_channels(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear`` on x (B, C_in, L) -> tokens (B, L, C_out); one plain GEMM without a copy when x
    is stored channels-outermost, as :func:`_linear_to_channels` returns it."""
    if not _plain(linear):
        return linear(x.transpose(1, 2))
    batch, channels, length = x.shape
    rows = x.transpose(0, 1).reshape(channels, batch * length)  # (C_in, B·L)
    return F.linear(rows.T, linear.weight, linear.bias).view(batch, length, -1)


def _plain(linear: nn.Module) -> bool:
    """A bare ``nn.Linear`` (its weight and bias are the whole function): a subclass, a wrapped
    layer (LoRA, quantised) or one with hooks is called as a module instead."""
    return type(linear) is nn.Linear and not (linear._forward_hooks or linear._forward_pre_hooks)
