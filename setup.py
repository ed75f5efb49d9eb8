"""Package discovery for the three-folder layout; everything else lives in pyproject.toml."""

from pathlib import Path

from setuptools import setup

# Import name -> folder. Must match [tool.setuptools] package-dir in pyproject.toml.
ROOTS = {"mambaverse": "core", "mambaverse.plugins": "plugins", "mambaverse.kernels": "kernels"}


def discover_packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for name, folder in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(here / folder)
            if "__pycache__" in relative.parts:
                continue
            found.append(".".join([name, *relative.parts]) if relative.parts else name)
    return found


setup(packages=discover_packages())
