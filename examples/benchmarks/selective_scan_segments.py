"""When to cut the selective scan's sequence into time segments: a sweep on the GPU.

For a few (batch, length) shapes of the Mamba-130m block (d=1536, n=16, bf16; u, δ, z, B, C
laid out as the block passes them: slices of its projections, channels innermost; the output
gradient contiguous (b, d, l), as in the run docs/benchmarks.md reports), times the Triton scan
forward and forward+backward with time segments off, with the committed rule
(``LaunchConfig.segment_below``), and always on. Medians of CUDA-event timings.

    python examples/benchmarks/selective_scan_segments.py --shapes 4x4096,2x8192,1x16384
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

import torch

from mambaverse.kernels.selective_scan import triton as ss

DIM, DSTATE, DT_RANK = 1536, 16, 48


def block_inputs(batch: int, length: int) -> list[torch.Tensor]:
    """u, δ, A, B, C, D, z, δ bias as the Mamba block passes them, requiring gradients."""
    cuda, bf16 = "cuda", torch.bfloat16
    xz = torch.randn(batch, length, 2 * DIM, device=cuda, dtype=bf16).transpose(1, 2)
    u, z = xz.chunk(2, dim=1)
    delta = (torch.randn(batch, length, DIM, device=cuda, dtype=bf16) * 0.5 - 1.5).transpose(1, 2)
    x_dbl = torch.randn(batch, length, DT_RANK + 2 * DSTATE, device=cuda, dtype=bf16)
    B = x_dbl[..., DT_RANK : DT_RANK + DSTATE].movedim(1, -1)
    C = x_dbl[..., DT_RANK + DSTATE :].movedim(1, -1)
    A = -(torch.rand(DIM, DSTATE, device=cuda) * 3 + 0.2)
    D, bias = torch.randn(DIM, device=cuda), torch.randn(DIM, device=cuda) * 0.3
    return [t.detach().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def median_ms(fn: Callable[[], Any], repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4x4096,2x8192,1x16384", help="BATCHxLENGTH,...")
    args = parser.parse_args()
    committed = ss._configs()
    variants = {"no segments": {"segment_below": 0}, "committed rule": {},
                "always": {"segment_below": 10**9}}  # fmt: skip
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.split("x"))
        inputs = block_inputs(batch, length)
        dout = torch.randn(batch, DIM, length, device="cuda", dtype=torch.bfloat16)
        for name, fields in variants.items():
            fwd_cfg, bwd_cfg = (dataclasses.replace(c, **fields) for c in committed)
            ss._configs = lambda f=fwd_cfg, b=bwd_cfg: (f, b)

            def forward(inputs: list[torch.Tensor] = inputs) -> torch.Tensor:
                with torch.no_grad():
                    return ss.selective_scan(*inputs, delta_softplus=True)

            def forward_backward(
                inputs: list[torch.Tensor] = inputs, dout: torch.Tensor = dout
            ) -> tuple[torch.Tensor, ...]:
                out = ss.selective_scan(*inputs, delta_softplus=True)
                return torch.autograd.grad(out, inputs, dout)

            programs = batch * triton_blocks(bwd_cfg)
            segments = ss._segments(bwd_cfg, programs, -(-length // bwd_cfg.chunk))[0]
            print(f"b={batch} l={length} {name} ({segments} segments, {programs} programs): "
                  f"fwd {median_ms(forward):.3f} ms, fwd+bwd {median_ms(forward_backward):.3f} ms",
                  flush=True)  # fmt: skip
        ss._configs = lambda: committed


def triton_blocks(config: ss.LaunchConfig) -> int:
    """Channel blocks per batch element."""
    return -(-DIM // config.block_d)


if __name__ == "__main__":
    main()
