"""VMamba (MzeroMiko/VMamba): a four-stage backbone of VSS blocks with the 2-D cross scan."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import BackboneSpec


@hookimpl
def mambaverse_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="vmamba",
            builder="mambaverse.plugins.vmamba.model:VMamba",
            task="vision",
            description="VMamba: hierarchical VSS blocks (SS2D cross scan + MLP), conv downsampling",
        )
    ]
