"""FLOPs of a vision model, counted the way the papers count them.

The papers (and their fvcore / ptflops tools) count one multiply-add as one FLOP. This module runs
one forward pass of a batch of one image under ``torch.utils.flop_counter.FlopCounterMode``, which
counts 2 per multiply-add of every matmul, convolution and attention, and halves its total. The
selective scans are not matmuls, so the counter would see only fragments of them; instead each
call of ``selective_scan`` is replaced by a stand-in that returns a tensor of the right shape and
adds the Mamba authors' count (state-spaces/mamba#110, also used by VMamba's ``flops_selective_scan_fn``)::

    scan(b, d, l, n) = 9·b·l·d·n  (+ b·d·l for the D skip, + b·d·l for the z gate)

Not counted, as in fvcore: element-wise operations (activations, norms, the softplus), and the
FFTs of EinFFT (its block matmuls are counted). The models run on the CPU (the kernel registry
has no ``meta`` implementations), but with the scans replaced they take a second or two each.

    python -m mambaverse.plugins._vision.flops            # a markdown table of every vision preset
"""

from __future__ import annotations

from dataclasses import dataclass
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

import mambaverse
from mambaverse.plugins.mixers import mamba as mamba_mixer

from . import scan_mamba


@dataclass(frozen=True)
class Flops:
    matmul: int  # multiply-adds of matmuls, convolutions and attention (torch's count / 2)
    scan: int  # selective scans, by the formula above

    @property
    def total(self) -> int:
        return self.matmul + self.scan


def scan_flops(batch: int, dim: int, length: int, dstate: int, skip: bool, gate: bool) -> int:
    return 9 * batch * length * dim * dstate + batch * dim * length * (int(skip) + int(gate))


def count_flops(
    model: torch.nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3
) -> Flops:
    """FLOPs of ``model`` for one image of ``img_size`` (on the model's device)."""
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    device = next(model.parameters()).device
    scans = []

    def stand_in(u, delta, A, B, C, D=None, z=None, return_last_state=False, **_):
        scans.append(
            scan_flops(u.shape[0], u.shape[1], u.shape[2], A.shape[1], D is not None, z is not None)
        )
        y = torch.zeros_like(u)
        return (y, u.new_zeros(u.shape[0], u.shape[1], A.shape[1])) if return_last_state else y

    counter = FlopCounterMode(display=False)
    # The stacked scan pads its sequences for aligned loads: the model's FLOPs exclude those steps.
    no_padding = mock.patch.dict(scan_mamba.SCAN_STEPS_MULTIPLE, clear=True)
    with (
        mock.patch.object(mamba_mixer, "selective_scan", stand_in),
        no_padding,
        counter,
        torch.no_grad(),
    ):
        model.eval()(torch.zeros(1, in_chans, height, width, device=device))
    return Flops(matmul=counter.get_total_flops() // 2, scan=sum(scans))


def giga(flops: int) -> str:
    """In units of 10⁹, with enough decimals to show the tiny presets."""
    return f"{flops / 1e9:.2f}" if flops >= 1e8 else f"{flops / 1e9:.4f}"


def preset_table() -> str:
    """Markdown rows for every vision preset: measured parameters and FLOPs (at 224², or at the
    preset's own smaller size for the tiny ones) next to what the paper published."""
    rows = [
        "| preset | input | params | paper | GFLOPs | of which scans | paper | ImageNet top-1 (paper) | source |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in mambaverse.list_models(task="vision"):
        info = mambaverse.model_info(name, count_params=False)
        size = min(224, info["config"].get("img_size", 224))
        model = mambaverse.create_model(name, img_size=size)
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model, size)
        paper = info["published"]
        rows.append(
            f"| {name} | {size}² | {params / 1e6:.2f}M | {paper.get('params', '')} "
            f"| {giga(flops.total)} | {giga(flops.scan)} | {paper.get('flops', '')} "
            f"| {paper.get('top1', '')} | {paper.get('paper', '')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(preset_table())
