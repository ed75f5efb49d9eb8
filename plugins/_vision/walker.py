"""Tokens of an H×W grid walked as the K sequences of a registered scan, and put back.

Tokens are ``(B, L, C)``: the grid's cells in row-major order, plus, for Vision Mamba, a class
token at position ``cls_index`` (the cells before it are patches 0 .. cls_index - 1). The class
token has no cell, so each walk carries it at a step of its own: between patches ``cls_index - 1``
and ``cls_index`` when the walk visits those two consecutively (which reproduces Vim exactly: its
forward sequence has the token there, and the flipped sequence ``x.flip(1)`` has it between the
same two patches), otherwise in the middle of the walk. Unwalking sums each cell over the walks
(the scan's merge) and the class token over the K walks; ``average=True`` divides both by how many
walks visited them, so the output keeps the scale of one walk.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mambaverse.api import get_scan


class Walker:
    """The scan ``scan`` (a registered name; ``options`` e.g. ``step=2`` for ``atrous``)."""

    def __init__(self, scan: str, options: dict | None = None) -> None:
        spec = get_scan(scan)  # an unknown name raises with the nearest registered ones
        self.scan, self.options = spec.name, dict(options or {})
        self.flatten, self.merge = spec.load()
        self.num_walks = spec.num_sequences

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Walker({self.scan!r}{options})"

    # -- cells <-> sequences ------------------------------------------------------------------
    def walk(
        self, tokens: torch.Tensor, grid: tuple[int, int], cls_index: int | None = None
    ) -> torch.Tensor:
        """tokens (B, L, C) -> sequences (B, K, L_walk [+1 with a class token], C)."""
        return _walk(self.flatten, _key(self.options), tokens, grid, cls_index)

    def unwalk(
        self,
        sequences: torch.Tensor,
        grid: tuple[int, int],
        cls_index: int | None = None,
        average: bool = False,
    ) -> torch.Tensor:
        """sequences (B, K, L_walk [+1], C) -> tokens (B, L, C), summed (or averaged) over walks."""
        H, W = grid
        cls = None
        if cls_index is not None:
            steps = self.class_token_steps(H, W, cls_index)
            per_walk = sequences.unbind(1)
            cls = sum(seq[:, step] for seq, step in zip(per_walk, steps))  # (B, C)
            sequences = torch.stack(
                [
                    torch.cat([seq[:, :step], seq[:, step + 1 :]], dim=1)
                    for seq, step in zip(per_walk, steps)
                ],
                dim=1,
            )
        cells = self.merge(sequences, H, W, **self.options).flatten(1, 2)  # (B, H·W, C)
        if average:
            cells = cells / self.coverage(H, W, cells.device, cells.dtype)
            cls = None if cls is None else cls / self.num_walks
        return join_class_token(cells, cls, cls_index)

    def token_orders(
        self,
        grid: tuple[int, int],
        cls_index: int | None,
        device: torch.device,
        steps_multiple_of: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """When every walk visits every token (class token included) exactly once: ``(order,
        inverse)`` on ``device``, order (K, S) and inverse (K, L), with ``walk(tokens)[:, k, t] ==
        tokens[:, order[k, t]]`` and ``order[k, inverse[k, i]] == i``: walking is then one gather,
        and unwalking one gather and a sum over k (:func:`mambaverse.kernels.gather_walks`,
        :func:`~mambaverse.kernels.merge_walks`). S = L rounded up to ``steps_multiple_of``: the
        steps past L hold L, which reads as a zero token (after every real step, so a causal
        scan's outputs there change nothing and are never gathered back). None when a walk pads
        or repeats (atrous)."""
        return _token_orders(
            self.flatten, _key(self.options), *grid, cls_index, device, steps_multiple_of
        )

    # -- cached facts about a grid -------------------------------------------------------------
    def class_token_steps(self, height: int, width: int, cls_index: int) -> tuple[int, ...]:
        return _class_token_steps(self.flatten, _key(self.options), height, width, cls_index)

    def coverage(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """(H·W, 1): how many walks visit each cell, at least 1 (unvisited cells stay 0 anyway)."""
        counts = _coverage(self.flatten, self.merge, _key(self.options), height, width)
        return counts.to(device=device, dtype=dtype)


def split_class_token(
    tokens: torch.Tensor, cls_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, L, C) -> the cells (B, L - 1, C) and the class token (B, C) at ``cls_index``."""
    if cls_index is None:
        return tokens, None
    cells = torch.cat([tokens[:, :cls_index], tokens[:, cls_index + 1 :]], dim=1)
    return cells, tokens[:, cls_index]


def join_class_token(
    cells: torch.Tensor, cls: torch.Tensor | None, cls_index: int | None
) -> torch.Tensor:
    """Inverse of :func:`split_class_token`."""
    if cls is None:
        return cells
    return torch.cat([cells[:, :cls_index], cls[:, None], cells[:, cls_index:]], dim=1)


def _key(options: dict) -> tuple:
    return tuple(sorted(options.items()))


# Cached tensors outlive the call: build ordinary ones even inside torch.inference_mode(), or a
# later training step could not save them for backward.
@lru_cache(maxsize=256)
@torch.inference_mode(False)
def _walked_cells(flatten, options: tuple, height: int, width: int) -> torch.Tensor:
    """(K, L_walk): the row-major cell each walk visits at each step, -1 on padding."""
    numbers = torch.arange(1, height * width + 1, dtype=torch.float64).view(1, height, width, 1)
    return flatten(numbers, **dict(options))[0, :, :, 0].long() - 1


@lru_cache(maxsize=256)
def _class_token_steps(
    flatten, options: tuple, height: int, width: int, cls_index: int
) -> tuple[int, ...]:
    cells = _walked_cells(flatten, options, height, width)
    steps = []
    for walk in cells.tolist():
        before = walk.index(cls_index - 1) if cls_index - 1 in walk else None
        after = walk.index(cls_index) if cls_index in walk else None
        consecutive = before is not None and after is not None and abs(before - after) == 1
        steps.append(max(before, after) if consecutive else len(walk) // 2)
    return tuple(steps)


@lru_cache(maxsize=256)
@torch.inference_mode(False)
def _coverage(flatten, merge, options: tuple, height: int, width: int) -> torch.Tensor:
    ones = torch.ones(1, height, width, 1)
    counts = merge(flatten(ones, **dict(options)), height, width, **dict(options))
    return counts.reshape(height * width, 1).clamp(min=1)


def _walk(
    flatten, options: tuple, tokens: torch.Tensor, grid: tuple[int, int], cls_index: int | None
) -> torch.Tensor:
    H, W = grid
    cells, cls = split_class_token(tokens, cls_index)
    sequences = flatten(cells.reshape(cells.shape[0], H, W, -1), **dict(options))
    if cls is None:
        return sequences
    steps = _class_token_steps(flatten, options, H, W, cls_index)
    return torch.stack(
        [
            torch.cat([seq[:, :step], cls[:, None], seq[:, step:]], dim=1)
            for seq, step in zip(sequences.unbind(1), steps)
        ],
        dim=1,
    )


@lru_cache(maxsize=256)
@torch.inference_mode(False)
def _token_orders(
    flatten,
    options: tuple,
    height: int,
    width: int,
    cls_index: int | None,
    device: torch.device,
    steps_multiple_of: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    # The tokens' own numbers through the general walk, from 1 so that padding reads as 0.
    tokens = height * width + (cls_index is not None)
    numbers = torch.arange(1, tokens + 1, dtype=torch.float64).view(1, tokens, 1)
    order = _walk(flatten, options, numbers, (height, width), cls_index)[0, :, :, 0].long() - 1
    if order.shape[1] != tokens or not (order.sort(dim=1).values == torch.arange(tokens)).all():
        return None
    inverse = order.argsort(dim=1)
    steps = -(-tokens // steps_multiple_of) * steps_multiple_of
    order = torch.nn.functional.pad(order, (0, steps - tokens), value=tokens)  # padding steps
    return order.to(device), inverse.to(device)
