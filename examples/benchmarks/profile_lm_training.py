"""Where a training step's GPU time goes: the scaling suite's language models under torch.profiler.

For each model (`mambaverse bench scaling`'s Mamba, Mamba-2, hybrid, Transformer at one size), one
forward + backward of `batch × length` random tokens (the scaling suite's `training_step`) is
profiled after warm-up calls. Printed per model: the step's wall time and the host time to issue
it (as long as the wall time when the CPU cannot keep the GPU busy), the GPU kernels' total time,
the share of each kind of kernel (matched on kernel names, below), the most expensive kernels and
the host operators with the most self time. Everything goes to
`<out>/profile_lm_training.json` too.

    python examples/benchmarks/profile_lm_training.py --models mamba,mamba2,transformer \\
        --length 4096 --tokens-per-batch 16384 --out runs/profile
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from mambaverse.bench.language_models import preset_family
from mambaverse.bench.measure import free_memory
from mambaverse.bench.report import name_list
from mambaverse.bench.scaling import training_step

# kind -> pattern on the kernel name; the first match wins, the rest is "elementwise & other".
KINDS = {
    "selective scan": r"^_selective_scan",
    "ssd scan": r"^_(states_fwd|chunk_scan_fwd|dstate_local|state_passing_bwd|dx|dB|dC|ddt)$",
    "attention": r"flash|fmha|attention|^_attn|^_bwd_delta",
    "causal conv": r"^_causal_conv|conv1d|conv_depthwise",
    "matmul": r"gemm|cutlass|sm90_xmma|nvjet|cublas|matmul|splitK",
    "cross-entropy & softmax": r"softmax|nll|cross_entropy|log_softmax|^_loss_(fwd|bwd)$",
    "copies & casts": r"copy|CatArray|transpose",
    "reductions (norms, sums)": r"reduce|norm",
}


def kind_of(kernel: str) -> str:
    for kind, pattern in KINDS.items():
        if re.search(pattern, kernel, re.IGNORECASE):
            return kind
    return "elementwise & other"


def profile_step(step: Any, warmup: int, repeats: int = 5) -> dict[str, Any]:
    """Median wall and host ms of a step (host: until the step returns, before waiting for the
    GPU: as long as the wall time when the CPU cannot keep the GPU busy), GPU µs per kernel name
    and host µs per operator (self time) of one profiled step."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    walls, hosts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        hosts.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    operators: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.device_time
        else:
            operators[event.name] += event.self_cpu_time_total
    return {
        "wall_ms": 1e3 * statistics.median(walls),
        "host_ms": 1e3 * statistics.median(hosts),
        "kernels": dict(kernels),
        "operators": dict(operators),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="130m")
    parser.add_argument("--models", type=name_list, default=["mamba", "mamba2", "transformer"])
    parser.add_argument("--attention", default="sdpa", help="the Transformer's attention kernel")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args()

    device, dtype = torch.device("cuda"), torch.bfloat16
    batch = max(1, args.tokens_per_batch // args.length)
    record: dict[str, Any] = {"command": vars(args), "device": torch.cuda.get_device_name()}
    for spec in preset_family(args.size, models=args.models, attention_impls=[args.attention]):
        model = spec.build(device, dtype).train()
        found = profile_step(training_step(model, batch, args.length, device), args.warmup)
        wall_ms, kernels, operators = found["wall_ms"], found["kernels"], found["operators"]
        total_us = sum(kernels.values())
        by_kind: dict[str, float] = defaultdict(float)
        for name, us in kernels.items():
            by_kind[kind_of(name)] += us
        tokens_per_s = batch * args.length / wall_ms * 1e3
        print(f"\n== {spec.label}: batch {batch} × {args.length}, step {wall_ms:.1f} ms wall "
              f"({tokens_per_s / 1e3:.1f}k tokens/s), host {found['host_ms']:.1f} ms, "
              f"GPU kernels {total_us / 1e3:.1f} ms, {len(kernels)} kernel names")  # fmt: skip
        for kind, us in sorted(by_kind.items(), key=lambda item: -item[1]):
            print(f"  {kind:26s} {us / 1e3:8.2f} ms  {100 * us / total_us:5.1f} %")
        print("  top kernels:")
        top = sorted(kernels.items(), key=lambda item: -item[1])[: args.top]
        for name, us in top:
            print(f"    {us / 1e3:8.2f} ms  {kind_of(name):22s} {name[:110]}")
        print("  top host operators (self time):")
        top_ops = sorted(operators.items(), key=lambda item: -item[1])[: args.top]
        for name, us in top_ops:
            print(f"    {us / 1e3:8.2f} ms  {name[:110]}")
        record[spec.label] = {
            "batch": batch,
            "length": args.length,
            "wall_ms": wall_ms,
            "host_ms": found["host_ms"],
            "kernel_ms": total_us / 1e3,
            "by_kind_ms": {kind: us / 1e3 for kind, us in by_kind.items()},
            "top": [(name, us / 1e3) for name, us in top],
            "top_host_operators": [(name, us / 1e3) for name, us in top_ops],
        }
        del model
        free_memory(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_lm_training.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
