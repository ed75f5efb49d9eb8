"""EinFFT, SiMBA's channel mixer (Patro & Agneeswaran 2024, badripatro/Simba, ``EinFFT``).

The channels of each token are cut into ``num_blocks`` blocks of ``block_size``; a 2-D FFT over
(tokens, blocks) moves to frequencies, where two block-diagonal complex linear maps ("Einstein
matrix multiplication", ``einsum('...bd,bdk->...bk')``) act on every frequency, with a complex
ReLU (ReLU on the real and the imaginary part) between them and a soft-shrink after; an inverse
FFT comes back and the real part is kept::

    X  = FFT2(x)                       x: (B, N, nb, bs) real -> X complex, over (N, nb), "ortho"
    X1 = CReLU(X W1 + b1)              W1: (nb, bs, bs) complex, b1: (nb, bs) complex
    X2 = softshrink(X1 W2 + b2, λ)     on real and imaginary parts; λ = sparsity_threshold
    y  = Re(IFFT2(X2))                 -> (B, N, nb·bs)

The residual connection is the block's (``x + EinFFT(norm(x))``), as in SiMBA's ``Block_mamba``.
The transform runs in float32 at least (FFTs in half precision need power-of-two sizes) and
returns the input's dtype. Parameters, as in the official code: complex weights stored as (2, nb, bs, bs) real
tensors (real part, imaginary part), initialised N(0, 1) · 0.02.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import NonNegativeFloat, Positive, PositiveFloat
from mambaverse.errors import ConfigError


class EinFFT(nn.Module):
    """(B, N, dim) -> (B, N, dim). num_blocks: channel blocks (dim must divide evenly).

    sparsity_threshold: λ of the soft-shrink in frequency space (0 disables it). scale: std of the
    initial weights and biases.
    """

    def __init__(
        self,
        dim: Positive,
        num_blocks: Positive = 4,
        sparsity_threshold: NonNegativeFloat = 0.01,
        scale: PositiveFloat = 0.02,
    ) -> None:
        super().__init__()
        if num_blocks <= 0 or dim % num_blocks:
            raise ConfigError(
                f"einfft mixer: dim {dim} is not a multiple of num_blocks {num_blocks}"
            )
        self.dim, self.num_blocks, self.block_size = dim, num_blocks, dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        blocks, size = num_blocks, self.block_size
        self.complex_weight_1 = nn.Parameter(torch.randn(2, blocks, size, size) * scale)
        self.complex_weight_2 = nn.Parameter(torch.randn(2, blocks, size, size) * scale)
        self.complex_bias_1 = nn.Parameter(torch.randn(2, blocks, size) * scale)
        self.complex_bias_2 = nn.Parameter(torch.randn(2, blocks, size) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"einfft mixer: expected input (batch, length, {self.dim}), got {tuple(x.shape)}"
            )
        B, N, _ = x.shape
        compute = torch.promote_types(x.dtype, torch.float32)  # half precision -> float32
        blocks = x.to(compute).view(B, N, self.num_blocks, self.block_size)
        spectrum = torch.fft.fft2(blocks, dim=(1, 2), norm="ortho")
        hidden = complex_relu(block_linear(spectrum, self.complex_weight_1, self.complex_bias_1))
        out = block_linear(hidden, self.complex_weight_2, self.complex_bias_2)
        if self.sparsity_threshold:
            out = torch.complex(
                F.softshrink(out.real, self.sparsity_threshold),
                F.softshrink(out.imag, self.sparsity_threshold),
            )
        y = torch.fft.ifft2(out, dim=(1, 2), norm="ortho").real
        return y.reshape(B, N, self.dim).to(x.dtype)


def block_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Complex x (..., nb, bs) times the block-diagonal W (nb, bs, bs), plus b (nb, bs).

    ``weight`` and ``bias`` hold (real part, imaginary part) along their first axis.
    """
    W = torch.complex(weight[0], weight[1])
    return torch.einsum("...bd,bdk->...bk", x, W) + torch.complex(bias[0], bias[1])


def complex_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU on the real and on the imaginary part separately."""
    return torch.complex(F.relu(x.real), F.relu(x.imag))
