"""Built-in backbone ``cobra``: Cobra-style vision-language models (towers, projector, Mamba LM),
and the datasets of text that it trains on (``vlm_digits``, ``vlm_jsonl``)."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec, DatasetSpec

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


@hookimpl
def mambaverse_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            "vlm_digits",
            options=f"{_HERE}.data:DigitTextOptions",
            build=f"{_HERE}.data:build_digit_text",
            task="vlm",
            description="digits as captions and answers",
        ),
        DatasetSpec(
            "vlm_jsonl",
            options=f"{_HERE}.data:JsonLinesOptions",
            build=f"{_HERE}.data:build_json_lines",
            task="vlm",
            description="image–text JSON lines",
        ),
    ]
