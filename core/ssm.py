"""State-space models from first principles, for learning: ``mambaverse.ssm``.

A continuous linear time-invariant (LTI) system with state x ∈ R^n, input u ∈ R^m, output y ∈ R^p::

    x'(t) = A x(t) + B u(t)
    y(t)  = C x(t) + D u(t)

Sampled with step Δ it becomes a recurrence (``discretize_zoh`` or ``discretize_bilinear``)::

    x_k = Ā x_{k-1} + B̄ u_k          x_{-1} = 0
    y_k = C x_k + D u_k

which, unrolled, is a causal convolution with the kernel K = (C B̄, C Ā B̄, C Ā² B̄, ...)::

    y_k = Σ_{j<=k} K_j u_{k-j} + D u_k

``run_recurrent`` and ``run_convolutional`` compute the same outputs the two ways: step by step
(constant memory, how a model generates) or all at once (parallel, how an LTI model trains).
Mamba makes Δ, B and C depend on the input, which breaks the convolution but keeps the
recurrence: that is the selective scan in :mod:`mambaverse.kernels`. docs/ssm.md tells the story.

Shapes: A (n, n), B (n, m), C (p, n), D (p, m) or None; sequences u (..., L, m) -> y (..., L, p).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _step_size(delta: float | Tensor, like: Tensor) -> Tensor:
    """Δ as a tensor that broadcasts against (..., n, n) matrices."""
    return torch.as_tensor(delta, dtype=like.dtype, device=like.device)[..., None, None]


def discretize_zoh(A: Tensor, B: Tensor, delta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold (the input is constant during each step): returns (Ā, B̄).

    Ā = exp(ΔA),  B̄ = ∫_0^Δ exp(sA) ds · B = (ΔA)^{-1} (exp(ΔA) - I) ΔB  (when A is invertible).

    Both come from one matrix exponential: exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, I]] (Van Loan),
    which stays exact when A is singular.
    """
    n, m = B.shape[-2:]
    top = torch.cat([A, B], dim=-1)  # (n, n + m)
    bottom = torch.zeros(*top.shape[:-2], m, n + m, dtype=A.dtype, device=A.device)
    block = torch.linalg.matrix_exp(_step_size(delta, A) * torch.cat([top, bottom], dim=-2))
    return block[..., :n, :n], block[..., :n, n:]


def discretize_bilinear(A: Tensor, B: Tensor, delta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin) transform, as in S4: returns (Ā, B̄).

    Ā = (I - ΔA/2)^{-1} (I + ΔA/2),  B̄ = (I - ΔA/2)^{-1} ΔB
    """
    delta = _step_size(delta, A)
    identity = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    backward = identity - delta / 2 * A
    return (
        torch.linalg.solve(backward, identity + delta / 2 * A),
        torch.linalg.solve(backward, delta * B),
    )


def step(
    A_bar: Tensor, B_bar: Tensor, C: Tensor, D: Tensor | None, state: Tensor, u: Tensor
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k + D u_k.

    state (..., n), u (..., m) -> (new state (..., n), y (..., p)). The matrices may carry
    leading batch dims, e.g. a different (Ā, B̄, C) per step or per channel.
    """
    state = (A_bar @ state[..., None] + B_bar @ u[..., None])[..., 0]
    y = (C @ state[..., None])[..., 0]
    if D is not None:
        y = y + (D @ u[..., None])[..., 0]
    return state, y


def run_recurrent(
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    D: Tensor | None,
    u: Tensor,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The recurrent view: apply :func:`step` to u (..., L, m) in order, from ``state`` (or 0).

    Returns y (..., L, p) and the final state (..., n). One step at a time (a Python loop: this
    is the teaching view), with memory that does not grow with L.
    """
    if state is None:
        state = u.new_zeros(*u.shape[:-2], A_bar.shape[-1])
    ys = []
    for k in range(u.shape[-2]):
        state, y = step(A_bar, B_bar, C, D, state, u[..., k, :])
        ys.append(y)
    return torch.stack(ys, dim=-2), state


def convolution_kernel(A_bar: Tensor, B_bar: Tensor, C: Tensor, length: int) -> Tensor:
    """K_j = C Ā^j B̄ for j < length: (length, p, m).

    The powers Ā^j B̄ double each round: [B̄] -> [B̄, ĀB̄] -> [B̄, ĀB̄, Ā²B̄, Ā³B̄] -> ...,
    about log2(length) matrix products.
    """
    powers = B_bar[None]  # Ā^j B̄ for j < 1: (1, n, m)
    power_of_A = A_bar  # Ā^{len(powers)}
    while powers.shape[0] < length:
        powers = torch.cat([powers, power_of_A @ powers])
        power_of_A = power_of_A @ power_of_A
    return C @ powers[:length]


def run_convolutional(
    A_bar: Tensor, B_bar: Tensor, C: Tensor, D: Tensor | None, u: Tensor
) -> Tensor:
    """The convolutional view: y_k = Σ_{j<=k} K_j u_{k-j} + D u_k for u (..., L, m) -> (..., L, p).

    The convolution is a product of Fourier transforms; zero-padding both signals to 2L turns
    the FFT's circular convolution into the causal (linear) one.
    """
    length = u.shape[-2]
    kernel = convolution_kernel(A_bar, B_bar, C, length)  # (L, p, m)
    size = 2 * length
    kernel_f = torch.fft.rfft(kernel, n=size, dim=0)  # (F, p, m)
    u_f = torch.fft.rfft(u, n=size, dim=-2)  # (..., F, m)
    y = torch.fft.irfft((kernel_f @ u_f[..., None])[..., 0], n=size, dim=-2)[..., :length, :]
    return y if D is None else y + u @ D.transpose(-1, -2)
