"""The five hooks a mambaverse plugin may implement.

A plugin is a module with functions decorated by :data:`mambaverse.hookimpl` whose names are the
hooks below. Each hook takes no arguments and returns a list of typed specs; the core records which
plugin contributed every name. Third-party plugins are found through the ``mambaverse`` entry-point
group::

    [project.entry-points.mambaverse]
    my_pkg = "my_pkg.plugin"

Keep the plugin module light: return specs whose callables are ``"module:function"`` strings (or
import your model code inside the hook), so that listing models does not import every model.
"""

from __future__ import annotations

import pluggy

from .specs import BackboneSpec, DatasetSpec, KernelSpec, MixerSpec, ScanSpec

PROJECT = "mambaverse"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def mambaverse_kernels() -> list[KernelSpec]:
    """Return compute-kernel implementations.

    Each :class:`KernelSpec` adds one implementation (``impl``) of an op (``op``). A new op is
    allowed; a new implementation of a built-in op (``selective_scan``, ``ssd_scan``,
    ``attention``, ...) must accept the op's public signature. Choose it with ``impl=`` or
    ``MAMBAVERSE_KERNELS="op=impl"``.
    """


@hookspec
def mambaverse_scans() -> list[ScanSpec]:
    """Return 2-D scan orders: ``flatten`` (B, H, W, C) -> (B, K, L, C) and its ``merge``."""


@hookspec
def mambaverse_mixers() -> list[MixerSpec]:
    """Return token or channel mixers: ``factory(dim, **config)`` -> module on (B, L, dim)."""


@hookspec
def mambaverse_backbones() -> list[BackboneSpec]:
    """Return model families with their presets: ``builder(**config)`` -> ``nn.Module``."""


@hookspec
def mambaverse_datasets() -> list[DatasetSpec]:
    """Return training datasets for ``mambaverse train``'s ``data.name``.

    Each :class:`DatasetSpec` names its options schema and ``build(options) -> Splits`` as
    ``"module:attribute"`` strings, imported only when a run uses the dataset.
    """
