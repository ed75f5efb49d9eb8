"""Built-in plugins: every sub-package here is one plugin, registered under its folder's name.

Registration order is alphabetical and comes before any third-party entry point. A plugin's
``__init__.py`` holds only its hook implementations; the model code lives in the modules beside it
and is imported when a spec's target is first used. Folders starting with ``_`` are not plugins.
"""

import pkgutil


def builtin_plugins() -> dict[str, str]:
    """Plugin name -> module, found without importing any of them."""
    return {
        info.name: f"{__name__}.{info.name}"
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name)
        if info.ispkg and not info.name.startswith("_")
    }
