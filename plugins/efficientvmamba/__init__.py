"""EfficientVMamba (TerryPei/EfficientVMamba): atrous selective scan + local conv branch (EVSS)."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="efficientvmamba",
            builder="mambaverse.plugins.efficientvmamba.model:EfficientVMamba",
            task="vision",
            description="EfficientVMamba: EVSS blocks (atrous-scan SSM + depthwise conv + SE), then inverted residuals",
        )
    ]
