"""Every mambaverse vision preset as a timm model. Importing this module registers them::

    import mambaverse.plugins._vision.timm_registry  # noqa: F401  (registers on import)
    import timm
    model = timm.create_model("vim_tiny", num_classes=10)

Each preset whose backbone has ``task="vision"`` (built-in or from a third-party plugin) becomes
a timm entry point that calls :func:`mambaverse.create_model` with timm's keyword arguments
(``num_classes``, ``global_pool``, ``drop_path_rate``, ``features_only``, ``img_size`` ...), so
open_clip's timm vision tower can use them too. timm is imported here, and only here, so that
building a mambaverse model does not pay for importing timm. A name timm already has from another
source is left alone. There are no pretrained weights to download: ``pretrained=True`` is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import is_model, register_model

from mambaverse.api import create_model, list_models

_registered: set[str] = set()


def register_timm_models() -> list[str]:
    """Register every vision preset not registered yet; return the names added."""
    added = []
    for name in list_models(task="vision"):
        if name in _registered or "." in name or is_model(name):
            continue  # timm uses "." for pretrained tags; never shadow timm's own models
        register_model(_entry_point(name))
        _registered.add(name)
        added.append(name)
    return added


def _entry_point(name: str) -> Callable[..., Any]:
    def build(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> Any:
        if pretrained:
            raise ValueError(
                f"{name}: mambaverse has no pretrained weights to download; build it with "
                "pretrained=False and load a checkpoint (timm's checkpoint_path=, or "
                "mambaverse.load_pretrained(dir))"
            )
        model = create_model(name, **kwargs)
        model.pretrained_cfg = {
            **model.pretrained_cfg,
            **(pretrained_cfg_overlay or {}),
            "architecture": name,
        }
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"mambaverse preset {name!r} (see `mambaverse info {name}`)."
    return build


register_timm_models()
