"""Vision Mamba (hustvl/Vim): bidirectional Mamba over image patches with a middle class token."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="vim",
            builder="mambaverse.plugins.vim.model:VisionMamba",
            task="vision",
            description="Vision Mamba: patch tokens, middle class token, bidirectional Mamba blocks",
        )
    ]
