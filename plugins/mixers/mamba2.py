"""The Mamba-2 (SSD) block of Dao & Gu, "Transformers are SSMs" (2024), as ``Mamba2`` in
state-spaces/mamba (mamba_ssm/modules/mamba2.py) and transformers' ``Mamba2Mixer``.

    z, xBC, dt = in_proj(u)           widths d_inner, d_inner + 2·ngroups·d_state, nheads
    x, B, C    = silu(conv1d(xBC))    x (B, L, nheads, headdim); B, C (B, L, ngroups, d_state)
    y          = SSD(x, Δ, A, B, C) + D x,   Δ = softplus(dt + dt_bias), A = -exp(A_log) per head
    out        = out_proj(GatedRMSNorm(y, z))

The scalar-per-head A makes the scan a chunked matrix computation (``ssd_scan``): within a chunk
of ``chunk_size`` steps it is masked attention-like matmuls, across chunks a short recurrence.
Heads in one group share B and C (like grouped-query attention shares keys and values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import NonNegativeFloat, Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.kernels import causal_conv1d, causal_conv1d_update, ssd_scan, ssd_state_update
from mambaverse.kernels.shared_grad import split_sharing_grad

from .base import TokenMixer
from .mamba import DecayRates, init_dt_bias
from .norms import GatedRMSNorm
from .state import SSMState

NO_DT_LIMIT = (0.0, math.inf)


class Mamba2(DecayRates, TokenMixer):
    """Mamba-2 mixer ``(B, L, dim) -> (B, L, dim)``; config keys as mamba_ssm's ``Mamba2``.

    d_state: state size N. d_conv: conv width. expand: d_inner / dim. headdim: P, channels per
    head (nheads = d_inner / headdim). ngroups: groups of heads sharing B and C. A_init_range:
    A_log = log(U[range]) per head. norm_before_gate, norm_eps: the gated RMSNorm (normalised in
    groups of d_inner / ngroups channels). dt_min, dt_max, dt_init_floor: initial Δ range.
    dt_limit: clamp of Δ after softplus. conv_bias, bias: conv1d / in_proj and out_proj biases.
    chunk_size: SSD chunk length. kernels: op -> impl for this mixer.
    """

    mixer_name = "mamba2"
    supports_padding = True

    def __init__(
        self,
        dim: Positive,
        d_state: Positive = 128,
        d_conv: Positive = 4,
        expand: PositiveFloat = 2,
        headdim: Positive = 64,
        ngroups: Positive = 1,
        A_init_range: Sequence[float] = (1.0, 16.0),
        norm_before_gate: bool = False,
        norm_eps: PositiveFloat = 1e-5,
        dt_min: PositiveFloat = 0.001,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: NonNegativeFloat = 1e-4,
        dt_limit: Sequence[float] = NO_DT_LIMIT,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: Positive = 256,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(dim, kernels)
        self.d_inner = int(expand * dim)
        if self.d_inner % headdim:
            raise ConfigError(
                f"mamba2 mixer: d_inner = expand·dim = {self.d_inner} is not a multiple of "
                f"headdim {headdim}"
            )
        self.nheads = self.d_inner // headdim
        if ngroups <= 0 or self.nheads % ngroups:
            raise ConfigError(
                f"mamba2 mixer: ngroups {ngroups} must divide the number of heads {self.nheads}"
            )
        low, high = A_init_range
        if not 0 < low <= high:
            raise ConfigError(f"mamba2 mixer: need 0 < A_init_range[0] <= [1], got {A_init_range}")
        self.d_state, self.d_conv, self.headdim, self.ngroups = d_state, d_conv, headdim, ngroups
        self.chunk_size = chunk_size
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        # in_proj output order: [z, x, B, C, dt] (x, B, C go through the conv together).
        self.in_proj = nn.Linear(dim, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        init_dt_bias(self.dt_bias, dt_min, dt_max, dt_init_floor)
        A = torch.empty(self.nheads, dtype=torch.float32).uniform_(low, high)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(
            self.d_inner, self.d_inner // ngroups, eps=norm_eps, norm_before_gate=norm_before_gate
        )
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def mix(
        self, u: torch.Tensor, state: SSMState | None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        length = u.shape[1]
        # Pieces whose gradients the kernels write into one buffer (no cat in the backward).
        z, xBC, dt = split_sharing_grad(
            self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1
        )
        xBC = xBC.transpose(1, 2)  # (B, conv_dim, L)
        if padding is not None:  # left padding: zero x, B, C there before and after the conv
            xBC = xBC * padding[:, None, :]
        if state is not None:
            state.require_empty()
            # The last d_conv inputs (zero-padded on the left when the prompt is shorter).
            state.conv.copy_(F.pad(xBC, (self.d_conv - length, 0)))
        xBC = causal_conv1d(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        if padding is not None:
            xBC = xBC * padding[:, None, :]
        x, B, C = split_sharing_grad(
            xBC.transpose(1, 2),
            [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state],
            dim=-1,
        )
        dt, dt_options = self._time_step(dt)  # (B, L, nheads)
        y = ssd_scan(
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            self.A,
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size,
            D=self.D,
            return_final_states=state is not None,
            **dt_options,
        )
        if state is not None:
            y, final_state = y
            state.ssm.copy_(final_state)
            state.holds_tokens = True
        y = self.norm(y.flatten(-2), z)  # (B, L, d_inner)
        return self.out_proj(y.to(u.dtype))

    def mix_step(self, u: torch.Tensor, state: SSMState) -> torch.Tensor:
        state.holds_tokens = True
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = causal_conv1d_update(
            state.conv, xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu"
        )
        x, B, C = xBC.split(
            [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1
        )
        dt, dt_options = self._time_step(dt)  # (B, nheads)
        y = ssd_state_update(
            state.ssm,
            x.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            self.decoding_A(),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            D=self.D,
            **dt_options,
        )
        return self.out_proj(self.norm(y.flatten(-2), z).to(u.dtype))

    def _time_step(self, dt: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Δ before the kernel, and the kernel options that finish it (bias + softplus).

        Without a limit the kernel adds dt_bias and applies softplus itself (fused); with one,
        Δ = clamp(softplus(dt + dt_bias), *dt_limit) is computed here and passed as is.
        """
        if self.dt_limit == NO_DT_LIMIT:
            return dt, {"dt_bias": self.dt_bias, "dt_softplus": True}
        dt = F.softplus(dt + self.dt_bias).clamp(*self.dt_limit)
        return dt, {"dt_bias": None, "dt_softplus": False}

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SSMState:
        """Zero state; its size is independent of ``max_seqlen`` (accepted for a common API)."""
        return SSMState.zeros(
            (batch_size, self.conv_dim, self.d_conv),
            (batch_size, self.nheads, self.headdim, self.d_state),
            like=self.in_proj.weight,
            dtype=dtype,
            device=device,
        )
