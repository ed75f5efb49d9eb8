"""2-D scans: the orders in which vision backbones walk a grid of tokens as 1-D sequences."""

from mambaverse.hookspecs import hookimpl
from mambaverse.specs import ScanSpec

_HERE = "mambaverse.plugins.scans"


@hookimpl
def mambaverse_scans() -> list[ScanSpec]:
    return [
        ScanSpec(
            name="causal",
            flatten=f"{_HERE}.causal:flatten",
            merge=f"{_HERE}.causal:merge",
            num_sequences=1,
            description="one row-major walk",
        ),
        ScanSpec(
            name="bidirectional",
            flatten=f"{_HERE}.bidirectional:flatten",
            merge=f"{_HERE}.bidirectional:merge",
            num_sequences=2,
            description="row-major and its reverse (Vision Mamba)",
        ),
        ScanSpec(
            name="cross2d",
            flatten=f"{_HERE}.cross2d:flatten",
            merge=f"{_HERE}.cross2d:merge",
            num_sequences=4,
            description="row-major, column-major and both reversed (VMamba SS2D)",
        ),
        ScanSpec(
            name="atrous",
            flatten=f"{_HERE}.atrous:flatten",
            merge=f"{_HERE}.atrous:merge",
            num_sequences=4,
            description="four skip-sampled sub-grids, options: step=2 (EfficientVMamba ES2D)",
        ),
    ]
