"""Built-in hybrid language models: ``hybrid_lm`` (Jamba, Bamba and any Mamba / Mamba-2 /
attention pattern), ``zamba`` (Zamba, Zamba2) and the ``moe`` mixer, with Hugging Face import."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec, MixerSpec

_HERE = "mambaverse.plugins.hybrid"


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="hybrid_lm",
            builder=f"{_HERE}.hybrid_lm:HybridLM",
            task="lm",
            description="Mamba / Mamba-2 / attention layers by pattern, MLP or MoE after each (Jamba, Bamba)",
            hf_model_types={
                "jamba": f"{_HERE}.convert_hybrid:from_hf_jamba",
                "bamba": f"{_HERE}.convert_hybrid:from_hf_bamba",
            },
        ),
        BackboneSpec(
            name="zamba",
            builder=f"{_HERE}.zamba:ZambaLM",
            task="lm",
            description="Mamba backbone with shared attention+MLP blocks on [h, embeddings] (Zamba, Zamba2)",
            hf_model_types={
                "zamba": f"{_HERE}.convert_zamba:from_hf_zamba",
                "zamba2": f"{_HERE}.convert_zamba:from_hf_zamba2",
            },
        ),
    ]


@hookimpl
def mambaverse_mixers() -> list[MixerSpec]:
    return [
        MixerSpec(
            name="moe",
            factory=f"{_HERE}.moe:MoE",
            kind="channel",
            description="top-k routed SwiGLU experts with a load-balancing loss (Jamba)",
        )
    ]
