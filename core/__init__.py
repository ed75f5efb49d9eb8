"""mambaverse: state-space (Mamba) and hybrid models for vision and language, as plugins.

Importing this package is cheap: plugins are discovered, and torch-heavy model code imported,
only when a lookup needs them.
"""

from importlib.metadata import PackageNotFoundError, version

from .api import (
    build_backbone,
    count_parameters,
    create_mixer,
    create_model,
    get_mixer,
    get_scan,
    list_kernels,
    list_mixers,
    list_models,
    list_plugins,
    list_scans,
    model_config,
    model_info,
    model_summary,
    register_plugin,
)
from .dispatch import choose_kernel, get_kernel, kernel_choices
from .errors import (
    AmbiguousNameError,
    ConfigError,
    KernelUnavailableError,
    MambaverseError,
    UnknownNameError,
)
from .hookspecs import hookimpl
from .pretrained import load_pretrained, save_hf, save_pretrained
from .specs import BackboneSpec, DatasetSpec, KernelSpec, MixerSpec, ScanSpec

try:
    __version__ = version("mambaverse")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AmbiguousNameError",
    "BackboneSpec",
    "ConfigError",
    "DatasetSpec",
    "KernelSpec",
    "KernelUnavailableError",
    "MambaverseError",
    "MixerSpec",
    "ScanSpec",
    "UnknownNameError",
    "__version__",
    "build_backbone",
    "choose_kernel",
    "count_parameters",
    "create_mixer",
    "create_model",
    "get_kernel",
    "get_mixer",
    "get_scan",
    "hookimpl",
    "kernel_choices",
    "list_kernels",
    "list_mixers",
    "list_models",
    "list_plugins",
    "list_scans",
    "load_pretrained",
    "model_config",
    "model_info",
    "model_summary",
    "register_plugin",
    "save_hf",
    "save_pretrained",
]
