"""Normalisation layers of the Mamba family: RMSNorm and Mamba-2's gated, grouped RMSNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.errors import unknown_name
from mambaverse.kernels import add_rms_norm, gated_rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x², last dim) + eps) * weight, computed in float32 (at least).

    When x and weight share a dtype this is ``torch.rms_norm`` (one fused kernel on CUDA,
    forward and backward; the weight multiplies in float32 before the cast, as mamba_ssm's
    Triton RMSNorm); a float32 residual stream against half weights keeps the float32 result.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # the norm in float32 at least, rounded to x's dtype, then the weight's product
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        return F.rms_norm(wide, (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm over groups of ``group_size`` channels, gated by silu(z).

    norm_before_gate=False (Mamba-2's choice): y = rms(x * silu(z)) * weight
    norm_before_gate=True:                     y = rms(x) * weight * silu(z)
    The mean of x² is taken per group, so with ngroups > 1 each group of heads is normalised
    on its own (this keeps the norm local to a tensor-parallel shard in the original code).
    """

    def __init__(
        self, dim: int, group_size: int, eps: float = 1e-5, norm_before_gate: bool = False
    ) -> None:
        super().__init__()
        if dim % group_size:
            raise ValueError(
                f"GatedRMSNorm: dim {dim} is not a multiple of group_size {group_size}"
            )
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: (..., dim) -> (..., dim) in x's dtype (the ``gated_rms_norm`` op: one fused
        kernel on CUDA, forward and backward)."""
        return gated_rms_norm(x, z, self.weight, self.group_size, self.eps, self.norm_before_gate)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}, "
            f"norm_before_gate={self.norm_before_gate}"
        )


def add_and_norm(
    norm: nn.Module,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    residual_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-norm block's "add -> norm": (norm(s), s) with s = x + residual (x when residual is
    None) kept in ``residual_dtype`` (default: the sum's). An :class:`RMSNorm` runs as the fused
    ``add_rms_norm`` op (one kernel on CUDA, normalising the float32 sum); another norm gets s
    cast to its weight's dtype."""
    if isinstance(norm, RMSNorm):
        return add_rms_norm(x, residual, norm.weight, norm.eps, residual_dtype)
    s = x if residual is None else residual + x
    if residual_dtype is not None:
        s = s.to(residual_dtype)
    return norm(s.to(norm.weight.dtype)), s


NORMS = ("rmsnorm", "layernorm")


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """``"rmsnorm"`` -> :class:`RMSNorm`, ``"layernorm"`` -> ``nn.LayerNorm``."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise unknown_name("norm", kind, NORMS)
