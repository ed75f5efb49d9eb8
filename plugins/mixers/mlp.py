"""Channel mixers: the GELU MLP of GPT / ViT and the gated (GLU) MLPs of Shazeer (2020).

    gelu:    y = fc2(gelu(fc1(x)))                               hidden_dim default 4·dim
    swiglu:  y = down_proj(silu(gate_proj(x)) * up_proj(x))      hidden_dim default 8·dim/3,
                                                                 rounded up to multiple_of
    geglu:   y = down_proj(gelu(gate_proj(x)) * up_proj(x))      (Zamba's MLP), same default
Both act on the last dimension only, so they map (..., dim) -> (..., dim).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mambaverse.bounds import Positive
from mambaverse.errors import unknown_name

ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu", "geglu")
GATED = {"swiglu": F.silu, "geglu": F.gelu}  # gated activation -> what it applies to the gate


class MLP(nn.Module):
    """Per-token MLP. activation: "gelu" (exact), "gelu_tanh" (tanh approximation), or the gated
    "swiglu" / "geglu".

    hidden_dim: None = 4·dim (gelu) or 8·dim/3 rounded up to ``multiple_of`` (gated, keeping the
    parameter count of a 4·dim GELU MLP). bias: biases on every projection.
    """

    def __init__(
        self,
        dim: Positive,
        hidden_dim: Positive | None = None,
        activation: Literal["gelu", "gelu_tanh", "swiglu", "geglu"] = "gelu",
        bias: bool = False,
        multiple_of: Positive = 128,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_name("mlp activation", activation, ACTIVATIONS)
        self.dim, self.activation = dim, activation
        if activation in GATED:
            if hidden_dim is None:
                hidden_dim = -(-int(8 * dim / 3) // multiple_of) * multiple_of
            self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
            self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
            self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)
        else:
            hidden_dim = 4 * dim if hidden_dim is None else hidden_dim
            self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
            self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.hidden_dim = hidden_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"mlp mixer: expected input (..., {self.dim}), got {tuple(x.shape)}")
        if self.activation in GATED:
            gate = GATED[self.activation](self.gate_proj(x))
            return self.down_proj(gate * self.up_proj(x))
        approximate = "tanh" if self.activation == "gelu_tanh" else "none"
        return self.fc2(F.gelu(self.fc1(x), approximate=approximate))
