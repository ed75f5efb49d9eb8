"""Where a language model's decoding step spends its GPU time, and what a kernel choice changes.

For each kernel choice given with ``--compare`` (``MAMBAVERSE_KERNELS`` values separated by ";",
"" = the registry's defaults): one eager step is profiled (CUDA kernels grouped by name: count
and GPU time), then the step captured as a CUDA graph (``mamba_lm``'s ``decode_graph``) is timed
for each batch size; all in one process, so the times are comparable. Random weights, bf16.

    python examples/benchmarks/profile_decode_step.py --model mamba_790m --batches 1,8 \\
        --compare ";causal_conv1d_update=reference"
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics

import torch

import mambaverse
from mambaverse.bench.measure import time_calls
from mambaverse.plugins.mamba_lm.decode_graph import clear_decode_graphs, decode_graph


def profile_eager_step(model: torch.nn.Module, batch: int, top: int) -> None:
    """Print the CUDA kernels of one eager decoding step, grouped by name, longest first."""
    from torch.profiler import ProfilerActivity, profile

    state = model.allocate_state(batch, 16)
    ids = torch.randint(0, 1000, (batch,), device="cuda")
    with torch.inference_mode():
        for _ in range(3):  # compile and autotune outside the profile
            model.step(ids, state)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model.step(ids, state)
            torch.cuda.synchronize()
    groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type.name == "CUDA":
            groups[event.name[:90]][0] += 1
            groups[event.name[:90]][1] += event.device_time_total
    count = sum(int(n) for n, _ in groups.values())
    busy_ms = sum(t for _, t in groups.values()) / 1e3
    print(f"eager step, batch {batch}: {count} kernels, {busy_ms:.3f} ms of GPU time")
    for name, (n, t) in sorted(groups.items(), key=lambda item: -item[1][1])[:top]:
        print(f"  {int(n):5d} {t / 1e3:8.3f} ms  {name}")


def graph_step_ms(model: torch.nn.Module, batch: int, steps: int = 300) -> float:
    """Median over 5 rounds of the per-step time of ``steps / 5`` replays (CUDA events)."""
    clear_decode_graphs(model)  # capture anew: the kernel choice may have changed
    graph = decode_graph(model, batch, "cuda")
    ids = torch.randint(0, 1000, (batch,), device="cuda")
    for _ in range(20):
        graph.step(ids)
    per_round = steps // 5

    def replay_round() -> None:
        for _ in range(per_round):
            graph.step(ids)

    rounds = time_calls(replay_round, torch.device("cuda"), repeats=5)
    return statistics.median(rounds) / per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mamba_790m", help="a language-model preset")
    parser.add_argument("--batches", default="1,8", help="batch sizes of the timed graphs")
    parser.add_argument("--profile-batch", type=int, default=8, help="batch of the eager profile")
    parser.add_argument("--top", type=int, default=20, help="kernel groups printed")
    parser.add_argument(
        "--compare",
        default="",
        help="MAMBAVERSE_KERNELS values to time the graph with, separated by ';' ('' = the "
        "defaults), e.g. ';causal_conv1d_update=reference'",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode_step.py times CUDA graphs; no CUDA device is visible")
    torch.manual_seed(0)
    model = mambaverse.create_model(args.model).to("cuda", torch.bfloat16).eval()
    print(f"{args.model} on {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
    for choice in args.compare.split(";"):
        os.environ["MAMBAVERSE_KERNELS"] = choice
        label = choice or "registry defaults"
        print(f"\n== {label}")
        profile_eager_step(model, args.profile_batch, args.top)
        for batch in (int(b) for b in args.batches.split(",")):
            print(f"{label:40s} batch {batch}: graph step {graph_step_ms(model, batch):.3f} ms")


if __name__ == "__main__":
    main()
