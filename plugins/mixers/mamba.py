"""The Mamba (S6) block of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces" (2023), as ``Mamba`` in state-spaces/mamba (mamba_ssm/modules/mamba_simple.py).

    x, z  = in_proj(u)                                  u: (B, L, dim) -> 2 × (B, d_inner, L)
    y     = SelectiveSSM(x) * silu(z)                   (B, d_inner, L)
    out   = out_proj(y)                                 (B, L, dim)

SelectiveSSM is one scan direction: a causal depthwise conv and silu, then the input-dependent
(Δ, B, C) = x_proj(x), Δ = softplus(dt_proj(Δ)), and the selective scan
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,    y_t = C_t h_t + D x_t
with A = -exp(A_log) (d_inner, d_state). It is its own module so that bidirectional variants
(Vision Mamba's "v2": shared in_proj/out_proj, one SelectiveSSM per direction) can reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import NonNegativeFloat, Positive, PositiveFloat
from mambaverse.errors import ConfigError
from mambaverse.kernels import (
    causal_conv1d,
    causal_conv1d_update,
    conv_walks,
    gather_walks,
    selective_scan,
    selective_state_update,
)

from .base import TokenMixer
from .norms import RMSNorm
from .state import SSMState

DT_INITS = ("random", "constant")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = log(1 + e^x) = y, i.e. x = y + log(1 - e^-y) (stable for small y)."""
    return y + torch.log(-torch.expm1(-y))


def init_dt_bias(bias: torch.Tensor, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """Set ``bias`` so that softplus(bias) = Δ ~ exp(U[log dt_min, log dt_max]), Δ >= dt_init_floor."""
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    log_dt = torch.rand_like(bias, dtype=torch.float32) * (
        math.log(dt_max) - math.log(dt_min)
    ) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    with torch.no_grad():
        bias.copy_(inverse_softplus(dt))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in half precision (A = -exp(A_log) must not round to bf16),
    unchanged in float32 and float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def stacked_decay_rates(modules: Sequence[DecayRates]) -> torch.Tensor:
    """A = -exp(A_log) of every module at once: (Σ A_log.numel(),), each flattened, in order."""
    return -torch.exp(at_least_float32(torch.cat([m.A_log.flatten() for m in modules])))


class DecayRates:
    """For the SSM modules with a learned decay per channel or head, A = -exp(A_log): ``A`` for a
    whole sequence, and :meth:`decoding_A` for a decoding step, which takes the A that
    :func:`step_decay_rates` computed for every layer at once, when inside one."""

    A_log: torch.Tensor

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(at_least_float32(self.A_log))

    def decoding_A(self) -> torch.Tensor:
        rates = _STEP_RATES.get()
        found = None if rates is None else rates.get(self)
        return self.A if found is None else found


# module -> its A, inside step_decay_rates; a context variable, so that threads (and nested
# steps) each see their own.
_STEP_RATES: ContextVar[dict[nn.Module, torch.Tensor] | None] = ContextVar(
    "step_rates", default=None
)


class SelectiveSSM(DecayRates, nn.Module):
    """One direction of Mamba's SSM path: conv1d -> x_proj -> dt_proj -> selective scan.

    Parameters (names as in mamba_ssm): conv1d (d_inner, 1, d_conv), x_proj (dt_rank + 2·d_state
    outputs, no bias), dt_proj (dt_rank -> d_inner, with bias), A_log (d_inner, d_state) =
    log(1..d_state) per channel (S4D-real), D (d_inner,) = 1. d_conv = 0: no conv1d and no silu,
    the path starts at x_proj (VMamba's SS2D convolves the 2-D grid before its scans).

    nheads > 1 (Zamba): the d_inner channels form nheads contiguous heads, each with its own
    x_proj and dt_proj block (block-diagonal projections, the same parameter count), so B and C
    are per head: the scan's grouped (b, nheads, d_state, L) layout. dt_bc_norm_eps (Jamba):
    RMSNorms with this epsilon on Δ, B and C right after x_proj (None = none).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        nheads: int = 1,
        dt_bc_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        if nheads <= 0 or d_inner % nheads:
            raise ConfigError(f"mamba: nheads {nheads} must divide d_inner {d_inner}")
        if dt_init not in DT_INITS:
            raise ConfigError(f"dt_init must be one of {', '.join(DT_INITS)}, got {dt_init!r}")
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.conv1d = (
            nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
            if d_conv > 0
            else None
        )
        self.nheads = nheads
        # Head h's x_proj block is rows h·(dt_rank + 2·d_state) ... of the weight; its dt_proj
        # block is rows h·head_dim ... (with one head: the plain mamba_ssm layers).
        self.x_proj = nn.Linear(d_inner // nheads, nheads * (dt_rank + 2 * d_state), bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.dt_bc_norm_eps = dt_bc_norm_eps
        if dt_bc_norm_eps is not None:
            self.dt_norm = RMSNorm(dt_rank, eps=dt_bc_norm_eps)
            self.B_norm = RMSNorm(d_state, eps=dt_bc_norm_eps)
            self.C_norm = RMSNorm(d_state, eps=dt_bc_norm_eps)

        # dt_proj keeps the variance of Δ's pre-activation at dt_scale² / 3 (random) or fixed.
        dt_init_std = dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        init_dt_bias(self.dt_proj.bias, dt_min, dt_max, dt_init_floor)

        # S4D-real: A = -(1, 2, ..., d_state) for every channel; kept in float32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor | None = None,
        state: SSMState | None = None,
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x, z: (B, d_inner, L) -> y (B, d_inner, L), y = scan(conv(x)) * silu(z).

        With ``state`` (starting from empty), store the last d_conv inputs and the final SSM state.
        padding: (B, L) bool, False at the left padding of a prompt: zeroing x there before and
        after the conv (as transformers' Mamba does) leaves the conv window and the state as an
        empty start, since Δ·x·B is then 0 at every pad.
        """
        length = x.shape[-1]
        if padding is not None:
            x = x * padding[:, None, :]
        if state is not None:
            state.require_empty()
            # F.pad left-pads with zeros when length < d_conv and crops when it is longer.
            state.conv.copy_(F.pad(x, (self.d_conv - length, 0)))
        if self.conv1d is not None:
            x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        if padding is not None:
            x = x * padding[:, None, :]
        dt, B, C = self._dt_B_C(x.transpose(1, 2))  # (B, L, d_inner), (B, L, [nheads,] d_state) × 2
        y = selective_scan(
            x,
            dt.transpose(1, 2),
            self.A,
            B.movedim(1, -1),  # (B, [nheads,] d_state, L)
            C.movedim(1, -1),
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=state is not None,
        )
        if state is None:
            return y
        y, last_state = y
        state.ssm.copy_(last_state)
        state.holds_tokens = True
        return y

    def step(self, x: torch.Tensor, z: torch.Tensor | None, state: SSMState) -> torch.Tensor:
        """x, z: (B, d_inner) for one new token -> y (B, d_inner); ``state`` updated in place."""
        state.holds_tokens = True
        if self.conv1d is not None:
            x = causal_conv1d_update(
                state.conv, x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu"
            )
        dt, B, C = self._dt_B_C(x)
        return selective_state_update(
            state.ssm,
            x,
            dt,
            self.decoding_A(),
            B,
            C,
            D=self.D,
            z=z,
            dt_bias=self.dt_proj.bias,
            dt_softplus=True,
        )

    def _dt_B_C(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., d_inner) -> Δ before bias and softplus (..., d_inner), B, C (..., d_state),
        or (..., nheads, d_state) with several heads."""
        heads = x.unflatten(-1, (self.nheads, -1))  # (..., nheads, head_dim)
        x_proj = self.x_proj.weight.unflatten(0, (self.nheads, -1))  # (nheads, R + 2N, head_dim)
        dt, B, C = torch.einsum("...hc,hoc->...ho", heads, x_proj).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        if self.dt_bc_norm_eps is not None:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt_proj = self.dt_proj.weight.unflatten(0, (self.nheads, -1))  # (nheads, head_dim, R)
        # The bias is added (in float32) inside the scan, together with the softplus.
        dt = torch.einsum("...hr,hcr->...hc", dt, dt_proj).flatten(-2)
        if self.nheads == 1:  # the ungrouped B, C layout of plain Mamba
            B, C = B.squeeze(-2), C.squeeze(-2)
        return dt, B, C

    def allocate_state(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SSMState:
        return SSMState.zeros(
            (batch_size, self.d_inner, self.d_conv),
            (batch_size, self.d_inner, self.d_state),
            like=self.x_proj.weight,
            dtype=dtype,
            device=device,
        )


@contextmanager
def step_decay_rates(model: nn.Module) -> Iterator[None]:
    """Around one decoding step of ``model``: every :class:`DecayRates` module in it (Mamba's
    SSMs, Mamba-2's mixers) takes its A = -exp(A_log) from one computation for all layers
    (concatenate, cast, exp, negate: 4 kernels a step) instead of 3 kernels per layer — 144 of a
    48-layer Mamba's ~680 kernels per token. A is computed inside the step, so a step captured
    in a CUDA graph recomputes it at every replay and follows the weights when they change in
    place."""
    ssms = [m for m in model.modules() if isinstance(m, DecayRates)]
    if len(ssms) < 2 or len({(s.A_log.device, s.A_log.dtype) for s in ssms}) > 1:
        yield  # layers on several devices or in several dtypes: each computes its own
        return
    parts = stacked_decay_rates(ssms).split([s.A_log.numel() for s in ssms])
    token = _STEP_RATES.set(
        {ssm: A.view(ssm.A_log.shape) for ssm, A in zip(ssms, parts, strict=True)}
    )
    try:
        yield
    finally:
        _STEP_RATES.reset(token)


def selective_ssms(
    ssms: Sequence[SelectiveSSM], x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor
) -> torch.Tensor:
    """K single-head SSMs, SSM k on walk k of the tokens x (B, d_inner, L), all at once:
    y (B, K, d_inner, steps) (no gate, no state). ``order`` (K, steps) and ``inverse`` (K, L)
    are the walks' plan (:func:`mambaverse.kernels.gather_walks`).

    One pass from the tokens to the walks, convolved (``conv_walks``; ``gather_walks`` without
    a conv), one batched x_proj and dt_proj, one scan whose B, C have K groups (B, K, d_state,
    steps): the per-SSM parameters are concatenated, so it is the same function as running each
    SSM on its walk, in a few launches instead of a few per walk.
    """
    first = ssms[0]
    if any(s.nheads != 1 or s.dt_bc_norm_eps is not None for s in ssms):
        raise ValueError("selective_ssms: only single-head SSMs without Δ/B/C norms are stacked")
    if first.conv1d is None:
        walks = gather_walks(x, order, inverse)  # (B, K, d_inner, steps)
    else:
        bias = None if first.conv1d.bias is None else torch.cat([s.conv1d.bias for s in ssms])
        weight = torch.cat([s.conv1d.weight.squeeze(1) for s in ssms])  # (K·d_inner, d_conv)
        walks = conv_walks(x, order, inverse, weight, bias, activation="silu")
    proj = torch.stack([s.x_proj.weight for s in ssms]) @ walks  # (B, K, R + 2N, steps)
    dt, B, C = proj.split([first.dt_rank, first.d_state, first.d_state], dim=2)
    delta = torch.stack([s.dt_proj.weight for s in ssms]) @ dt  # (B, K, d_inner, steps)
    y = selective_scan(
        walks.flatten(1, 2),
        delta.flatten(1, 2),
        stacked_decay_rates(ssms).view(-1, first.d_state),  # (K·d_inner, d_state)
        B,  # (B, K, N, steps): walk k's channels read group k
        C,
        D=torch.cat([s.D for s in ssms]),
        delta_bias=torch.cat([s.dt_proj.bias for s in ssms]),
        delta_softplus=True,
    )
    return y.view(walks.shape)


class Mamba(TokenMixer):
    """Mamba-1 mixer ``(B, L, dim) -> (B, L, dim)``; config keys as mamba_ssm's ``Mamba``.

    d_state: SSM state size N per channel. d_conv: causal conv width. expand: d_inner / dim.
    dt_rank: rank of Δ's projection ("auto" = ceil(dim / 16)). dt_min, dt_max, dt_init_floor:
    range of the initial Δ. dt_init ("random" | "constant"), dt_scale: dt_proj weight init.
    conv_bias: conv1d bias. bias: in_proj / out_proj bias. nheads: independent SSM heads
    (Zamba; see SelectiveSSM). dt_bc_norm_eps: RMSNorms on Δ, B, C (Jamba; None = none).
    kernels: op -> impl for this mixer.
    """

    mixer_name = "mamba"
    supports_padding = True

    def __init__(
        self,
        dim: Positive,
        d_state: Positive = 16,
        d_conv: Positive = 4,
        expand: PositiveFloat = 2,
        dt_rank: Positive | Literal["auto"] = "auto",
        dt_min: PositiveFloat = 0.001,
        dt_max: PositiveFloat = 0.1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: NonNegativeFloat = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        nheads: Positive = 1,
        dt_bc_norm_eps: float | None = None,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(dim, kernels)
        self.d_inner = int(expand * dim)
        if dt_rank == "auto":
            dt_rank = math.ceil(dim / 16)
        elif not isinstance(dt_rank, int) or dt_rank <= 0:
            raise ConfigError(
                f"mamba mixer: dt_rank must be 'auto' or a positive int, got {dt_rank!r}"
            )
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias)
        self.ssm = SelectiveSSM(
            self.d_inner,
            d_state,
            d_conv,
            dt_rank,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_init_floor=dt_init_floor,
            conv_bias=conv_bias,
            nheads=nheads,
            dt_bc_norm_eps=dt_bc_norm_eps,
        )
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def mix(
        self, u: torch.Tensor, state: SSMState | None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Split before transposing: the gradients of x and z (channels innermost, as the kernels
        # return them) then join into (B, L, 2·d_inner) without a transposing copy.
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, L, d_inner) each
        y = self.ssm(x.transpose(1, 2), z.transpose(1, 2), state, padding)  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2).to(u.dtype))

    def mix_step(self, u: torch.Tensor, state: SSMState) -> torch.Tensor:
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, d_inner) each
        return self.out_proj(self.ssm.step(x, z, state).to(u.dtype))

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SSMState:
        """Zero state; its size is independent of ``max_seqlen`` (accepted for a common API)."""
        return self.ssm.allocate_state(batch_size, dtype=dtype, device=device)
