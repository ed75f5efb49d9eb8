"""Any registered token mixer on a 2-D grid of tokens, by name: ``build_grid_mixer(dim, scan, mixer)``.

- ``mixer="mamba"`` builds :class:`~.scan_mamba.ScanMamba`: shared projections and one SSM per
  walk of the scan, the structure of Vim, VMamba and EfficientVMamba (``mamba_options`` carry the
  backbone's SSM settings; ``mixer_config`` overrides them).
- any other token mixer (``mamba2``, ``attention``, a third party's) runs along every walk with
  one set of weights (:class:`WalkedMixer`), built by ``create_mixer(mixer, dim, **mixer_config)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mambaverse.api import check_config, create_mixer, get_mixer, list_mixers
from mambaverse.errors import ConfigError
from mambaverse.plugins.mixers.mamba import Mamba

from .scan_mamba import ScanMamba
from .walker import Walker


class WalkedMixer(nn.Module):
    """A ``(B, L, dim)`` mixer applied to each of the scan's K walks (the same weights for all);
    each token's outputs are averaged over the walks that visit it."""

    def __init__(self, mixer: nn.Module, walker: Walker) -> None:
        super().__init__()
        self.mixer, self.walker = mixer, walker

    def forward(
        self, tokens: torch.Tensor, grid: tuple[int, int], cls_index: int | None = None
    ) -> torch.Tensor:
        walks = self.walker.walk(tokens, grid, cls_index)  # (B, K, L_walk, dim)
        B, K = walks.shape[:2]
        mixed = self.mixer(walks.flatten(0, 1)).unflatten(0, (B, K))
        return self.walker.unwalk(mixed, grid, cls_index, average=True)


def build_grid_mixer(
    dim: int,
    scan: str,
    mixer: str,
    scan_options: dict[str, Any] | None = None,
    mixer_config: dict[str, Any] | None = None,
    mamba_options: dict[str, Any] | None = None,
) -> nn.Module:
    """The token mixer ``mixer`` walking the grid with the scan ``scan``.

    Unknown names raise :class:`~mambaverse.UnknownNameError` with the nearest registered ones; a
    channel mixer or an unknown config key raises :class:`~mambaverse.ConfigError`.
    """
    walker = Walker(scan, scan_options)
    spec = get_mixer(mixer)
    if spec.kind != "token":
        raise ConfigError(
            f"mixer {mixer!r} mixes channels; a token mixer is needed here, one of: "
            + ", ".join(list_mixers("token"))
        )
    config = dict(mixer_config or {})
    if spec.load() is Mamba:
        options = {**(mamba_options or {}), **config}
        check_config(
            f"config of mixer {mixer!r} on a grid", ScanMamba, options, skip=("dim", "walker")
        )
        return ScanMamba(dim, walker, **options)
    return WalkedMixer(create_mixer(mixer, dim, **config), walker)
