"""A plugin object for the core tests: one kernel op with three implementations and a backbone."""

from __future__ import annotations

from mambaverse import BackboneSpec, KernelSpec, MixerSpec, hookimpl


def slow_add(x, y):
    return ("slow", x + y)


def fast_add(x, y):
    return ("fast", x + y)


def gpu_add(x, y):
    return ("gpu", x + y)


class ToyNet:
    def __init__(self, width: int = 8, depth: int = 2, num_classes: int = 10) -> None:
        self.width, self.depth, self.num_classes = width, depth, num_classes

    def parameters(self):
        return iter(())


def toy_mixer(dim: int, expand: int = 2):
    return ("toy_mixer", dim, expand)


class ToyPlugin:
    @hookimpl
    def mambaverse_kernels(self):
        return [
            KernelSpec("toy_add", "fast", fast_add, devices=("cpu",), dtypes=("float32",)),
            KernelSpec("toy_add", "slow", slow_add, devices=("cpu",)),
            KernelSpec("toy_add", "gpu", gpu_add, devices=("cuda",)),
        ]

    @hookimpl
    def mambaverse_mixers(self):
        return [MixerSpec("toy_mixer", toy_mixer, kind="channel")]

    @hookimpl
    def mambaverse_backbones(self):
        return [
            BackboneSpec(
                "toynet",
                ToyNet,
                task="vision",
                presets={"toynet_small": {"width": 4}, "toynet_large": {"width": 64}},
            )
        ]
