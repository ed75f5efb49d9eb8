"""SiMBA (badripatro/Simba): Mamba token mixing with the EinFFT channel mixer, in four stages."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec, MixerSpec


@hookimpl
def mambaverse_mixers() -> list[MixerSpec]:
    return [
        MixerSpec(
            name="einfft",
            factory="mambaverse.plugins.simba.einfft:EinFFT",
            kind="channel",
            description="SiMBA's EinFFT: FFT, block-diagonal complex weights, complex ReLU, inverse FFT",
        )
    ]


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="simba",
            builder="mambaverse.plugins.simba.model:SiMBA",
            task="vision",
            description="SiMBA: four stages of Mamba token mixing + EinFFT channel mixing",
        )
    ]
