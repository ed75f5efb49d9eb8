"""Multi-head and grouped-query self-attention, with optional rotary embeddings and a KV cache.

    q = x Wq, k = x Wk, v = x Wv        q: (B, num_heads, L, head_dim); k, v: (B, num_kv_heads, L, head_dim)
    y = softmax(q kᵀ / sqrt(head_dim) [+ causal mask]) v     each group of num_heads / num_kv_heads
    out = y Wo                                                 query heads shares one k, v head

The ``attention`` kernel computes the middle line. Decoding keeps every past k and v (the KV
cache), so unlike the SSM mixers its state grows with the sequence, up to ``max_seqlen``.

A *static* cache (``KVCache.static``, set by the CUDA-graph decoder) keeps the number of filled
positions on the device as well: a decoding step then writes at that position and attends over
the whole buffer with a mask (through torch SDPA, whichever ``attention`` kernel is chosen: the
others take no mask), so its shapes and addresses are the same at every token and the step can
be replayed from a captured graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mambaverse.bounds import Positive
from mambaverse.errors import ConfigError
from mambaverse.kernels import apply_rotary, attention
from mambaverse.kernels.attention.sdpa import grouped_sdpa

from .base import TokenMixer


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far: (B, num_kv_heads, max_seqlen, head_dim) buffers,
    of which the first ``length`` positions are filled.

    static: decoding steps read their position from ``filled`` ((1,) int64 on the buffers'
    device, kept equal to ``length`` while static) and never from the host (see the module
    docstring).
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0
    static: bool = False
    filled: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.filled = torch.full((1,), self.length, dtype=torch.long, device=self.keys.device)

    @property
    def max_seqlen(self) -> int:
        return self.keys.shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, num_kv_heads, n, head_dim) after the cached ones; return all of them."""
        self.require_room(k.shape[2])
        end = self.length + k.shape[2]
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        if self.static:
            self.filled.fill_(end)
        return self.keys[:, :, :end], self.values[:, :, :end]

    def append_static(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store one token's k, v (B, num_kv_heads, 1, head_dim) at position ``filled`` without
        reading it on the host; return the mask of the positions it may attend to,
        (1, 1, 1, max_seqlen) bool. ``length`` is advanced too (a replayed graph does not run
        this Python: its caller advances ``length``)."""
        self.require_room(1)  # checked on the host: a write past the buffer would be fatal
        visible = torch.arange(self.max_seqlen, device=self.keys.device) <= self.filled
        self.keys.index_copy_(2, self.filled, k)
        self.values.index_copy_(2, self.filled, v)
        self.filled += 1
        self.length += 1
        return visible[None, None, None, :]

    def require_room(self, tokens: int) -> None:
        """Raise unless ``tokens`` more fit in the buffers."""
        if self.length + tokens > self.max_seqlen:
            raise ValueError(
                f"attention KV cache: {self.length + tokens} tokens exceed its max_seqlen "
                f"{self.max_seqlen}; allocate the state with a larger max_seqlen"
            )

    def clear(self) -> None:
        """An empty sequence again (the buffers keep their values: nothing reads them unfilled)."""
        self.length = 0
        self.filled.zero_()


class Attention(TokenMixer):
    """Self-attention mixer ``(B, L, dim) -> (B, L, dim)``.

    num_heads: query heads. num_kv_heads: key/value heads (None = num_heads; fewer gives
    grouped-query attention, 1 multi-query). head_dim: None = dim / num_heads. causal: mask the
    future. rope_theta: rotary base (None = no rotary embeddings). rotary_dim: channels rotated
    per head (None = head_dim). qkv_bias, out_bias: projection biases. out_dim: width of the
    output (None = dim; Zamba's shared attention reads 2·d_model channels and writes d_model).
    scale: softmax scale (None = 1/sqrt(head_dim)). kernels: op -> impl.
    """

    mixer_name = "attention"

    def __init__(
        self,
        dim: Positive,
        num_heads: Positive = 8,
        num_kv_heads: Positive | None = None,
        head_dim: Positive | None = None,
        causal: bool = True,
        rope_theta: float | None = 10000.0,
        rotary_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        out_dim: Positive | None = None,
        scale: float | None = None,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(dim, kernels)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ConfigError(
                f"attention mixer: num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})"
            )
        if head_dim is None:
            if dim % num_heads:
                raise ConfigError(
                    f"attention mixer: dim {dim} is not a multiple of num_heads {num_heads}; "
                    "set head_dim explicitly"
                )
            head_dim = dim // num_heads
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rope_theta is not None and (rotary_dim % 2 or not 0 < rotary_dim <= head_dim):
            raise ConfigError(
                f"attention mixer: rotary_dim must be even and in 1..head_dim={head_dim}, got {rotary_dim}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.rope_theta, self.rotary_dim = causal, rope_theta, rotary_dim
        self.scale = scale
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(num_heads * head_dim, out_dim or dim, bias=out_bias)

    def mix(self, x: torch.Tensor, state: KVCache | None) -> torch.Tensor:
        if state is not None and state.length:
            raise ValueError(
                "attention mixer: a parallel forward with a state starts a new sequence; "
                f"this KV cache already holds {state.length} tokens (use step())"
            )
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._qkv(x, positions)
        if state is not None:
            state.append(k, v)
        y = attention(q, k, v, causal=self.causal, scale=self.scale)  # (B, num_heads, L, head_dim)
        return self.out_proj(y.transpose(1, 2).flatten(2))

    def mix_step(self, x: torch.Tensor, state: KVCache) -> torch.Tensor:
        if not self.causal:
            raise ValueError(
                "attention mixer: step() decodes causally; this mixer has causal=False"
            )
        if state.static:  # fixed shapes, position read on the device: graph-capturable
            q, k, v = self._qkv(x[:, None], state.filled)
            visible = state.append_static(k, v)
            y = grouped_sdpa(q, state.keys, state.values, attn_mask=visible, scale=self.scale)
            return self.out_proj(y.flatten(1))
        # arange launches a kernel; torch.tensor([...]) would copy from host memory and wait.
        positions = torch.arange(state.length, state.length + 1, device=x.device)
        q, k, v = self._qkv(x[:, None], positions)  # (B, heads, 1, head_dim)
        keys, values = state.append(k, v)
        # The new query may see every cached token, so no mask is needed.
        y = attention(q, keys, values, causal=False, scale=self.scale)
        return self.out_proj(y.flatten(1))

    def _qkv(
        self, x: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, dim) -> q (B, num_heads, L, head_dim), k, v (B, num_kv_heads, L, head_dim)."""
        q = self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        if self.rope_theta is not None:
            q = apply_rotary(q, positions, self.rotary_dim, self.rope_theta)
            k = apply_rotary(k, positions, self.rotary_dim, self.rope_theta)
        return q, k, v

    def allocate_state(
        self,
        batch_size: int,
        max_seqlen: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Empty KV cache for up to ``max_seqlen`` tokens."""
        dtype = dtype or self.k_proj.weight.dtype
        device = device or self.k_proj.weight.device
        shape = (batch_size, self.num_kv_heads, max_seqlen, self.head_dim)
        return KVCache(
            keys=torch.zeros(shape, dtype=dtype, device=device),
            values=torch.zeros(shape, dtype=dtype, device=device),
        )
