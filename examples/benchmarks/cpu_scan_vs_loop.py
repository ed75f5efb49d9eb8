"""Time the reference scans against the per-step loop they replace, on the CPU.

    python examples/benchmarks/cpu_scan_vs_loop.py [--length 4096] [--repeats 5] [--threads N]

The loop is the float64 test oracle (tests/kernels/oracles.py) run in float32: the recurrence
written one step at a time, as a naive PyTorch implementation would. Both run the same inputs in
float32 on the same threads; each time is the best of ``--repeats`` runs (the loop: of fewer, it
is slow). The table also shows how far the two outputs are apart (relative error).
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.*

from mambaverse.kernels import selective_scan, ssd_scan
from tests.kernels.oracles import relative_error, selective_scan_oracle, ssd_oracle


def best_time(run: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs (after one warm-up run)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def selective_case(
    length: int, batch: int, dim: int, dstate: int
) -> tuple[str, Callable, Callable]:
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=gen)
    delta = torch.randn(batch, dim, length, generator=gen)
    A = -torch.rand(dim, dstate, generator=gen) * 4
    B, C = (torch.randn(batch, dstate, length, generator=gen) for _ in range(2))
    D, delta_bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    args = (u, delta, A, B, C, D)
    options = {"delta_bias": delta_bias, "delta_softplus": True}
    name = f"selective_scan  b={batch} d={dim} n={dstate} l={length}"
    return (
        name,
        lambda: selective_scan(*args, **options),
        lambda: selective_scan_oracle(*args, **options, dtype=torch.float32)[0],
    )


def ssd_case(
    length: int, batch: int, heads: int, headdim: int, dstate: int, chunk: int
) -> tuple[str, Callable, Callable]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, heads, headdim, generator=gen)
    dt = torch.randn(batch, length, heads, generator=gen)
    A = -torch.rand(heads, generator=gen) * 4
    B, C = (torch.randn(batch, length, 1, dstate, generator=gen) for _ in range(2))
    D, dt_bias = torch.randn(heads, generator=gen), torch.randn(heads, generator=gen)
    args = (x, dt, A, B, C)
    options = {"D": D, "dt_bias": dt_bias, "dt_softplus": True}
    name = f"ssd_scan  b={batch} h={heads} p={headdim} n={dstate} l={length} chunk={chunk}"
    return (
        name,
        lambda: ssd_scan(*args, chunk, **options),
        lambda: ssd_oracle(*args, **options, dtype=torch.float32)[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [
        selective_case(args.length, batch=1, dim=32, dstate=16),
        ssd_case(args.length, batch=1, heads=4, headdim=32, dstate=16, chunk=64),
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    print(f"{'case':<52} {'loop ms':>9} {'reference ms':>13} {'speed-up':>9} {'rel. error':>11}")
    for name, reference, loop in cases:
        error = relative_error(reference(), loop())
        loop_s = best_time(loop, max(1, args.repeats // 3))
        reference_s = best_time(reference, args.repeats)
        speedup = loop_s / reference_s
        print(
            f"{name:<52} {loop_s * 1e3:>9.1f} {reference_s * 1e3:>13.1f} {speedup:>8.1f}x"
            f" {error:>11.1e}"
        )


if __name__ == "__main__":
    main()
