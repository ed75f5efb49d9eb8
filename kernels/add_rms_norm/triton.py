"""Residual add and RMSNorm in Triton, forward and backward, one pass each.

Per row (the last dimension, d channels), with s = x + residual summed in fp32:

    r = 1 / sqrt(mean(s²) + eps)        ŝ = s · r        y = ŝ · weight

Backward, with g = ∂L/∂y · weight and ∂L/∂s_out the gradient reaching the stored s:

    ∂L/∂s = r · (g − ŝ · mean(g · ŝ)) + ∂L/∂s_out        ∂L/∂x = ∂L/∂residual = ∂L/∂s
    ∂L/∂weight = Σ_rows ∂L/∂y · ŝ

Unfused, a pre-norm block's "add -> cast -> norm" is three kernels that write the sum, read it
back twice and write a rounded copy; here each program loads a (rows, d) tile of x and the
residual once and writes y, s and r (one fp32 per row, for the backward). The backward reads the
stored s (the residual stream the next block reads anyway) instead of x and the residual, and
each of its programs walks several row tiles, keeping its share of ∂L/∂weight in registers
(summed over programs afterwards: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mambaverse.kernels.triton_support import (
    CachedLaunch,
    as_rows,
    cdiv,
    check_device,
    check_float,
    records_gradient,
    row_programs,
    row_tile,
)

OP = "add_rms_norm"
MAX_DIM = 65536  # one row per tile: Triton tiles hold at most 2**20 elements, registers far fewer


@CachedLaunch
@triton.jit
def _add_rms_norm_fwd(x_p, r_p, w_p, y_p, s_p, rstd_p, rows, dim, eps, s_x, s_r,
                      HAS_RESIDUAL: tl.constexpr, STORE_RSTD: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """y, s (rows, dim) contiguous, with STORE_RSTD rstd (rows,); grid (row tiles,)."""
    row = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    col = tl.arange(0, BLOCK_D)
    mask_d = col < dim
    mask = (row < rows)[:, None] & mask_d[None, :]
    s = tl.load(x_p + row[:, None] * s_x + col[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s += tl.load(r_p + row[:, None] * s_r + col[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(s * s, axis=1) / dim + eps)  # (BLOCK_R,)
    w = tl.load(w_p + col, mask=mask_d, other=0.0).to(tl.float32)
    y = s * rstd[:, None] * w[None, :]
    out = row[:, None] * dim + col[None, :]
    tl.store(y_p + out, y.to(y_p.dtype.element_ty), mask=mask)
    tl.store(s_p + out, s.to(s_p.dtype.element_ty), mask=mask)
    if STORE_RSTD:
        tl.store(rstd_p + row, rstd, mask=row < rows)


@CachedLaunch
@triton.jit
def _add_rms_norm_bwd(dy_p, ds_p, s_p, rstd_p, w_p, dx_p, dr_p, dw_p, rows, dim, s_dy, s_ds,
                      HAS_DS: tl.constexpr, STORE_DR: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """dx (and dr with STORE_DR) (rows, dim) contiguous; this program's ∂L/∂weight in row pid of
    dw (programs, dim) fp32; grid (programs,), each walking row tiles pid, pid + programs, ..."""
    pid = tl.program_id(0)
    col = tl.arange(0, BLOCK_D)
    mask_d = col < dim
    w = tl.load(w_p + col, mask=mask_d, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for start in range(pid * BLOCK_R, rows, tl.num_programs(0) * BLOCK_R):
        row = (start + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask = (row < rows)[:, None] & mask_d[None, :]
        out = row[:, None] * dim + col[None, :]
        rstd = tl.load(rstd_p + row, mask=row < rows, other=0.0)
        s_hat = tl.load(s_p + out, mask=mask, other=0.0).to(tl.float32) * rstd[:, None]
        dy = tl.load(dy_p + row[:, None] * s_dy + col[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        g = dy * w[None, :]
        ds = rstd[:, None] * (g - s_hat * (tl.sum(g * s_hat, axis=1) / dim)[:, None])
        if HAS_DS:
            ds += tl.load(ds_p + row[:, None] * s_ds + col[None, :], mask=mask, other=0.0).to(
                tl.float32
            )
        tl.store(dx_p + out, ds.to(dx_p.dtype.element_ty), mask=mask)
        if STORE_DR:
            tl.store(dr_p + out, ds.to(dr_p.dtype.element_ty), mask=mask)
        dw += dy * s_hat
    tl.store(dw_p + pid * dim + col, tl.sum(dw, axis=0), mask=mask_d)


def _forward(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    residual_dtype: torch.dtype,
    store_rstd: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(y, s) as (rows, d) tensors, and 1/rms per row when ``store_rstd`` (for the backward)."""
    dim = x.shape[-1]
    x2 = as_rows(x)
    r2 = as_rows(residual) if residual is not None else x2
    rows = x2.shape[0]
    y = torch.empty((rows, dim), device=x.device, dtype=weight.dtype)
    s = torch.empty((rows, dim), device=x.device, dtype=residual_dtype)
    rstd = torch.empty((rows,), device=x.device, dtype=torch.float32) if store_rstd else None
    block_r, block_d, warps = row_tile(dim)
    _add_rms_norm_fwd[(cdiv(rows, block_r),)](
        x2, r2, weight, y, s, rstd if store_rstd else y, rows, dim, eps, x2.stride(0), r2.stride(0),
        HAS_RESIDUAL=residual is not None, STORE_RSTD=store_rstd, BLOCK_R=block_r,
        BLOCK_D=block_d, num_warps=warps,
    )  # fmt: skip
    return y, s, rstd


class _AddRmsNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_dtype):
        ctx.set_materialize_grads(False)
        y, s, rstd = _forward(x, residual, weight, eps, residual_dtype, store_rstd=True)
        ctx.save_for_backward(s, rstd, weight)
        ctx.x_dtype = x.dtype
        ctx.residual_in_dtype = residual.dtype if residual is not None else None
        return y.view(x.shape), s.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y, grad_s):
        s, rstd, weight = ctx.saved_tensors
        rows, dim = s.shape
        shape = grad_y.shape if grad_y is not None else grad_s.shape
        dy = as_rows(grad_y) if grad_y is not None else torch.zeros_like(s, dtype=weight.dtype)
        ds = as_rows(grad_s) if grad_s is not None else dy
        wants_dr = ctx.residual_in_dtype is not None and ctx.needs_input_grad[1]
        dx = torch.empty((rows, dim), device=s.device, dtype=ctx.x_dtype)
        dr = (
            torch.empty((rows, dim), device=s.device, dtype=ctx.residual_in_dtype)
            if wants_dr
            else dx
        )
        block_r, block_d, warps = row_tile(dim)
        programs = row_programs(rows, block_r, s.device)
        dw = torch.empty((programs, dim), device=s.device, dtype=torch.float32)
        _add_rms_norm_bwd[(programs,)](
            dy, ds, s, rstd, weight, dx, dr, dw, rows, dim, dy.stride(0), ds.stride(0),
            HAS_DS=grad_s is not None, STORE_DR=wants_dr, BLOCK_R=block_r, BLOCK_D=block_d,
            num_warps=warps,
        )  # fmt: skip
        grad_w = dw.sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_r = dr.view(shape) if wants_dr else None
        return dx.view(shape), grad_r, grad_w, None, None


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-5,
    residual_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton implementation of :func:`mambaverse.kernels.add_rms_norm` (see there); shapes are
    checked by the public function. y and s are contiguous."""
    check_device(OP, {"x": x, "residual": residual, "weight": weight})
    check_float(OP, {"x": x, "residual": residual, "weight": weight})
    if x.shape[-1] > MAX_DIM:
        raise ValueError(
            f"{OP} (triton): rows of {x.shape[-1]} channels; the kernel holds a row in one tile, "
            f"up to {MAX_DIM}; use impl='reference' for wider rows"
        )
    weight = weight.contiguous()  # the kernels index it as contiguous (a no-op when it is)
    if records_gradient(x, residual, weight):
        return _AddRmsNormFn.apply(x, residual, weight, float(eps), residual_dtype)
    y, s, _ = _forward(x, residual, weight, float(eps), residual_dtype, store_rstd=False)
    return y.view(x.shape), s.view(x.shape)  # no gradient recorded: no autograd node, no 1/rms
