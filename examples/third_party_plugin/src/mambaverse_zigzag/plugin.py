"""The plugin's hooks: light, no torch import; targets are imported when first used."""

from mambaverse import BackboneSpec, ScanSpec, hookimpl


@hookimpl
def mambaverse_scans() -> list[ScanSpec]:
    return [
        ScanSpec(
            name="zigzag",
            flatten="mambaverse_zigzag.scan:flatten",
            merge="mambaverse_zigzag.scan:merge",
            num_sequences=1,
            description="boustrophedon rows: left-to-right, then right-to-left, ...",
        )
    ]


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="convmixer",
            builder="mambaverse_zigzag.convmixer:ConvMixer",
            task="vision",
            presets={"convmixer_micro": {"dim": 64, "depth": 4, "kernel_size": 5, "patch_size": 2}},
            description="ConvMixer (Trockman & Kolter, 2022): patches + depthwise/pointwise conv blocks",
        )
    ]
