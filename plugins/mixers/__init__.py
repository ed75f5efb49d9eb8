"""Built-in mixers: Mamba, Mamba-2, attention (token mixers) and the MLP (channel mixer)."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import MixerSpec

_HERE = "mambaverse.plugins.mixers"


@hookimpl
def mambaverse_mixers() -> list[MixerSpec]:
    return [
        MixerSpec(
            name="mamba",
            factory=f"{_HERE}.mamba:Mamba",
            kind="token",
            description="Mamba-1 selective SSM block (Gu & Dao 2023)",
        ),
        MixerSpec(
            name="mamba2",
            factory=f"{_HERE}.mamba2:Mamba2",
            kind="token",
            description="Mamba-2 SSD block with gated RMSNorm (Dao & Gu 2024)",
        ),
        MixerSpec(
            name="attention",
            factory=f"{_HERE}.attention:Attention",
            kind="token",
            description="multi-head / grouped-query self-attention with rotary embeddings",
        ),
        MixerSpec(
            name="mlp",
            factory=f"{_HERE}.mlp:MLP",
            kind="channel",
            description="per-token MLP: GELU or SwiGLU",
        ),
    ]
