"""Built-in backbone ``cobra``: Cobra-style vision-language models (towers, projector, Mamba LM)."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec

_HERE = "mambaverse.plugins.cobra"


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="cobra",
            builder=f"{_HERE}.model:CobraVLM",
            task="vlm",
            description="Cobra: vision towers + projector + Mamba language model (Zhao et al. 2024)",
        )
    ]
