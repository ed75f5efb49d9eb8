"""Built-in backbone ``mamba_lm``: Mamba and Mamba-2 language models, with Hugging Face import."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec

_HERE = "mambaverse.plugins.mamba_lm"


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="mamba_lm",
            builder=f"{_HERE}.model:MambaLM",
            task="lm",
            description="Mamba / Mamba-2 causal language model (state-spaces/mamba MambaLMHeadModel)",
            hf_model_types={
                "mamba": f"{_HERE}.convert:from_hf_mamba",
                "mamba2": f"{_HERE}.convert:from_hf_mamba2",
            },
            hf_export=f"{_HERE}.convert:to_hf",
        )
    ]
