"""The gated, grouped RMSNorm in Triton, forward and backward, one pass each.

Per row and group of G channels, with s = silu(z) and the row's v = x · s (norm_before_gate
False, Mamba-2's) or v = x (True), all in fp32:

    r = 1 / sqrt(mean(v²) + eps)        v̂ = v · r        y = v̂ · w  (· s when norm_before_gate)

Backward, with g = ∂L/∂y · w (· s when norm_before_gate) and s' = σ(z)(1 + z(1 − σ(z))):

    ∂L/∂v = r · (g − v̂ · mean(g · v̂))
    False:  ∂L/∂x = ∂L/∂v · s        ∂L/∂z = ∂L/∂v · x · s'        ∂L/∂w = Σ_rows ∂L/∂y · v̂
    True:   ∂L/∂x = ∂L/∂v            ∂L/∂z = ∂L/∂y · v̂ · w · s'    ∂L/∂w = Σ_rows ∂L/∂y · v̂ · s

In PyTorch this is about ten kernels forward and twenty backward, each a pass over fp32 copies
of the (rows, d) activations; here the forward reads x and z once and writes y and r (one fp32
per row and group), and the backward reads x, z and ∂L/∂y once and writes ∂L/∂x and ∂L/∂z. Each
program handles one group of a tile of rows (grid axis 1: the group), so z may be a strided
slice of a wider projection (Mamba-2's in_proj output) and is never copied. The backward's
programs each walk several row tiles of one group, loading the next tile while computing this
one and keeping their share of ∂L/∂w in registers (summed over programs afterwards:
deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambaverse.kernels.shared_grad import grad_slot
from mambaverse.kernels.triton_support import (
    CachedLaunch,
    as_rows,
    cdiv,
    check_device,
    check_float,
    interpreting,
    records_gradient,
    row_programs,
    row_tile,
    silu_and_grad,
    stride_alignment,
    strided,
)

OP = "gated_rms_norm"
MAX_GROUP = 65536  # one group of a row per tile: Triton tiles hold at most 2**20 elements


@CachedLaunch
@triton.jit
def _gated_rms_norm_fwd(x_p, z_p, w_p, y_p, rstd_p, rows, dim, group_size, eps, s_x, s_z,
                        NORM_BEFORE_GATE: tl.constexpr, STORE_RSTD: tl.constexpr,
                        ALIGN: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_G: tl.constexpr):  # fmt: skip
    """y (rows, dim) contiguous, with STORE_RSTD rstd (rows, groups); grid (row tiles, groups).
    ALIGN: what every row stride is a multiple of (`stride_alignment`; Mamba-2's z is a slice
    of rows 3352 = 8 · 419 apart, loaded 16 bytes at a time only with the hint)."""
    row = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    group = tl.program_id(1)
    within = tl.arange(0, BLOCK_G)
    col = group * group_size + within
    mask_c = within < group_size
    mask = (row < rows)[:, None] & mask_c[None, :]
    x = tl.load(x_p + strided(row, s_x, ALIGN, 0) + col[None, :], mask=mask, other=0.0)
    z = tl.load(z_p + strided(row, s_z, ALIGN, 0) + col[None, :], mask=mask, other=0.0)
    x, z = x.to(tl.float32), z.to(tl.float32)
    gate, _ = silu_and_grad(z)
    v = x if NORM_BEFORE_GATE else x * gate
    rstd = tl.rsqrt(tl.sum(v * v, axis=1) / group_size + eps)  # (BLOCK_R,)
    w = tl.load(w_p + col, mask=mask_c, other=0.0).to(tl.float32)
    y = v * rstd[:, None] * w[None, :]
    if NORM_BEFORE_GATE:
        y = y * gate
    y_at = y_p + strided(row, dim, ALIGN, 0) + col[None, :]
    tl.store(y_at, y.to(y_p.dtype.element_ty), mask=mask)
    if STORE_RSTD:
        tl.store(rstd_p + row * tl.num_programs(1) + group, rstd, mask=row < rows)


@triton.jit
def _bwd_tile_loads(dy_p, x_p, z_p, rstd_p, row, col, mask_c, rows, s_dy, s_x, s_z, groups, group,
                    ALIGN: tl.constexpr):  # fmt: skip
    """∂L/∂y, x, z (in their dtypes) and 1/rms of one tile of rows (zeros past the last row)."""
    mask = (row < rows)[:, None] & mask_c[None, :]
    dy = tl.load(dy_p + strided(row, s_dy, ALIGN, 0) + col[None, :], mask=mask, other=0.0)
    x = tl.load(x_p + strided(row, s_x, ALIGN, 0) + col[None, :], mask=mask, other=0.0)
    z = tl.load(z_p + strided(row, s_z, ALIGN, 0) + col[None, :], mask=mask, other=0.0)
    rstd = tl.load(rstd_p + row * groups + group, mask=row < rows, other=0.0)
    return dy, x, z, rstd


@CachedLaunch
@triton.jit
def _gated_rms_norm_bwd(dy_p, x_p, z_p, rstd_p, w_p, dx_p, dz_p, dw_p, rows, dim, group_size,
                        s_dy, s_x, s_z, s_dx, s_dz, NORM_BEFORE_GATE: tl.constexpr,
                        ALIGN: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_R: tl.constexpr,
                        BLOCK_G: tl.constexpr):  # fmt: skip
    """dx, dz (rows, dim) with row strides s_dx, s_dz (dz may be z's slot of a shared-gradient
    split); ALIGN as in the forward, for every row stride; this program's ∂L/∂w over its group's
    channels in row pid of dw (programs, dim) fp32; grid (programs, groups), program pid walking
    row tiles pid, pid + programs, ... (PREFETCH: loading each next tile before computing this
    one, see `_backward_tile`)."""
    pid = tl.program_id(0)
    group = tl.program_id(1)
    within = tl.arange(0, BLOCK_G)
    col = group * group_size + within
    mask_c = within < group_size
    w = tl.load(w_p + col, mask=mask_c, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_R, BLOCK_G), dtype=tl.float32)
    step = tl.num_programs(0) * BLOCK_R
    groups = tl.num_programs(1)
    if PREFETCH:  # the next tile's loads are in flight while this tile computes
        row = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        tile = _bwd_tile_loads(dy_p, x_p, z_p, rstd_p, row, col, mask_c, rows, s_dy, s_x, s_z,
                               groups, group, ALIGN)  # fmt: skip
    for start in range(pid * BLOCK_R, rows, step):
        row = (start + tl.arange(0, BLOCK_R)).to(tl.int64)
        if PREFETCH:
            dy, x, z, rstd = tile
            tile = _bwd_tile_loads(dy_p, x_p, z_p, rstd_p, row + step, col, mask_c, rows, s_dy,
                                   s_x, s_z, groups, group, ALIGN)  # fmt: skip
        else:
            dy, x, z, rstd = _bwd_tile_loads(dy_p, x_p, z_p, rstd_p, row, col, mask_c, rows, s_dy,
                                             s_x, s_z, groups, group, ALIGN)  # fmt: skip
        mask = (row < rows)[:, None] & mask_c[None, :]
        x, z, dy = x.to(tl.float32), z.to(tl.float32), dy.to(tl.float32)
        gate, dgate = silu_and_grad(z)
        if NORM_BEFORE_GATE:
            v_hat = x * rstd[:, None]
            g = dy * w[None, :] * gate
        else:
            v_hat = x * gate * rstd[:, None]
            g = dy * w[None, :]
        dv = rstd[:, None] * (g - v_hat * (tl.sum(g * v_hat, axis=1) / group_size)[:, None])
        if NORM_BEFORE_GATE:
            dx = dv
            dz = dy * v_hat * w[None, :] * dgate
            dw += dy * v_hat * gate
        else:
            dx = dv * gate
            dz = dv * x * dgate
            dw += dy * v_hat
        dx_at = dx_p + strided(row, s_dx, ALIGN, 0)
        dz_at = dz_p + strided(row, s_dz, ALIGN, 0)
        tl.store(dx_at + col[None, :], dx.to(dx_p.dtype.element_ty), mask=mask)
        tl.store(dz_at + col[None, :], dz.to(dz_p.dtype.element_ty), mask=mask)
    tl.store(dw_p + pid * dim + col, tl.sum(dw, axis=0), mask=mask_c)


def _forward(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    group_size: int,
    eps: float,
    norm_before_gate: bool,
    store_rstd: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """y as a (rows, d) tensor, and 1/rms per row and group when ``store_rstd``."""
    dim = x.shape[-1]
    x2, z2 = as_rows(x), as_rows(z)
    rows, groups = x2.shape[0], dim // group_size
    y = torch.empty((rows, dim), device=x.device, dtype=x.dtype)
    rstd = torch.empty((rows, groups), device=x.device, dtype=torch.float32) if store_rstd else None
    block_r, block_g, warps = row_tile(group_size)
    _gated_rms_norm_fwd[(cdiv(rows, block_r), groups)](
        x2, z2, weight, y, rstd if store_rstd else y, rows, dim, group_size, eps,
        x2.stride(0), z2.stride(0), NORM_BEFORE_GATE=norm_before_gate, STORE_RSTD=store_rstd,
        ALIGN=stride_alignment(x2.stride(0), z2.stride(0), dim), BLOCK_R=block_r,
        BLOCK_G=block_g, num_warps=warps,
    )  # fmt: skip
    return y, rstd


class _GatedRmsNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, weight, group_size, eps, norm_before_gate):
        y, rstd = _forward(x, z, weight, group_size, eps, norm_before_gate, store_rstd=True)
        # x and z themselves, not their row views: their autograd history leads grad_slot to z's
        # place in Mamba-2's in_proj gradient.
        ctx.save_for_backward(x, z, rstd, weight)
        ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y):
        x, z, rstd, weight = ctx.saved_tensors
        x2, z2, dy = as_rows(x), as_rows(z), as_rows(grad_y)
        rows, dim = x2.shape
        groups = dim // ctx.group_size
        dx, dz = _rows_or_dense(grad_slot(x), x2), _rows_or_dense(grad_slot(z), z2)
        block_r, block_g, warps, prefetch = _backward_tile(ctx.group_size)
        programs = row_programs(rows, block_r, x.device, per_sm=2 if prefetch else 8)
        dw = torch.empty((programs, dim), device=x.device, dtype=torch.float32)
        _gated_rms_norm_bwd[(programs, groups)](
            dy, x2, z2, rstd, weight, dx, dz, dw, rows, dim, ctx.group_size,
            dy.stride(0), x2.stride(0), z2.stride(0), dx.stride(0), dz.stride(0),
            NORM_BEFORE_GATE=ctx.norm_before_gate, PREFETCH=prefetch,
            ALIGN=stride_alignment(dy.stride(0), x2.stride(0), z2.stride(0), dx.stride(0),
                                   dz.stride(0)),
            BLOCK_R=block_r, BLOCK_G=block_g, num_warps=warps,
        )  # fmt: skip
        grad_w = dw.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        shape = grad_y.shape
        return dx.view(shape), dz.view(shape), grad_w, None, None, None


def _backward_tile(group_size: int) -> tuple[int, int, int, bool]:
    """(BLOCK_R, BLOCK_G, warps, prefetch) of the backward. With half the forward's rows (on the
    GPU) a tile of at most 8 elements per thread prefetches the next tile: at Mamba-2-130m's 1536
    channels (1 row × 2048, 8 warps) that is 125 registers, two programs per SM, 1.46× the
    unprefetched (2, 2048) tile (run S16). Wider tiles would spill with a second tile's loads in
    registers (local sm_90 SASS: 1 × 16384 at 16 warps, 864 → 1816 bytes of stack); they keep
    the forward's tile, unprefetched."""
    block_r, block_g, warps = row_tile(group_size)
    halved = block_r if interpreting() else max(1, block_r // 2)
    if halved * block_g <= 8 * 32 * warps:
        return halved, block_g, warps, True
    return block_r, block_g, warps, False


def _rows_or_dense(slot: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """Where to write a (rows, d) gradient: the rows of its slot when they are a view with unit
    channel stride (a shared-gradient split's piece), else a dense tensor."""
    if slot is not None:
        try:
            slot_rows = slot.view(rows.shape)
        except RuntimeError:  # the slot's rows are not one stride apart: write densely instead
            slot_rows = None
        if slot_rows is not None and slot_rows.stride(-1) == 1:
            return slot_rows
    return torch.empty_like(rows, memory_format=torch.contiguous_format)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    group_size: int,
    eps: float = 1e-5,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Triton implementation of :func:`mambaverse.kernels.gated_rms_norm` (see there); shapes
    are checked by the public function. y is contiguous."""
    check_device(OP, {"x": x, "z": z, "weight": weight})
    check_float(OP, {"x": x, "z": z, "weight": weight})
    if group_size > MAX_GROUP:
        raise ValueError(
            f"{OP} (triton): groups of {group_size} channels; the kernel holds a group in one "
            f"tile, up to {MAX_GROUP}; use impl='reference' for wider groups"
        )
    weight = weight.contiguous()  # the kernels index it as contiguous (a no-op when it is)
    args = (x, z, weight, int(group_size), float(eps), bool(norm_before_gate))
    if records_gradient(x, z, weight):
        return _GatedRmsNormFn.apply(*args)
    y, _ = _forward(*args, store_rstd=False)
    return y.view(x.shape)  # no gradient recorded: no autograd node, no 1/rms
