"""Data-parallel scaling of `mambaverse train`: samples/s on one GPU, on two with DDP, and on two
with FSDP, for a 130m-class language model in bf16 on random tokens (nothing is downloaded).

Each setting is a real `accelerate launch ... -m mambaverse train` run of the same per-GPU batch
(weak scaling); throughput is the median of the logged windows after the first (Triton compiles
and autotunes there). The goal is two GPUs at >= 1.8x the samples/s of one.

    python examples/benchmarks/ddp_scaling.py --out results/      # on a machine with 2 GPUs
    python examples/benchmarks/ddp_scaling.py --cpu --model mamba_micro --seq-len 64 --steps 12
                                                                   # the plumbing, on a CPU

Writes ``ddp_scaling.json`` and ``ddp_scaling.md`` (a table for docs/benchmarks.md) to --out;
the runs themselves (metrics, weights) go to --work, a temporary directory by default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FSDP_CONFIG = HERE.parent / "configs" / "accelerate" / "fsdp.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(args: argparse.Namespace) -> dict[str, list[str]]:
    """Setting name -> `accelerate launch` options."""
    if args.cpu:  # two gloo processes: accelerate needs --multi_gpu plus ACCELERATE_USE_CPU=1
        return {
            "1 process": ["--num_processes", "1", "--cpu"],
            "2 processes, DDP": ["--multi_gpu", "--num_processes", "2"],
        }
    chosen = {
        "1 GPU": ["--num_processes", "1", "--mixed_precision", "bf16"],
        "2 GPUs, DDP": ["--multi_gpu", "--num_processes", "2", "--mixed_precision", "bf16"],
    }
    if not args.no_fsdp:
        chosen["2 GPUs, FSDP"] = ["--config_file", str(FSDP_CONFIG)]
    return chosen


def write_tokens(path: Path, args: argparse.Namespace, vocab_size: int) -> None:
    """Enough random tokens for every process's steps plus a small test split."""
    needed = args.steps * args.batch * 2 * (args.seq_len + 1)
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, vocab_size, size=int(needed * 1.2), dtype=np.int32))


def throughput(run_dir: Path, seq_len: int) -> dict[str, float]:
    """Median samples/s (and tokens/s) of the logged windows after the first."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["samples_per_s"] for r in records if r["split"] == "train"][1:]
    if not windows:
        raise SystemExit(f"{run_dir}: too few logged windows; raise --steps")
    samples = statistics.median(windows)
    return {"samples_per_s": samples, "tokens_per_s": samples * seq_len, "windows": len(windows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mamba_130m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="sequences per GPU and step")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("."), help="where the results go")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary dir)")
    parser.add_argument("--cpu", action="store_true", help="gloo processes on the CPU")
    parser.add_argument("--no-fsdp", action="store_true", help="skip the FSDP setting")
    args = parser.parse_args()

    import mambaverse

    vocab_size = mambaverse.model_config(args.model)["vocab_size"]
    work = args.work or Path(tempfile.mkdtemp(prefix="ddp_scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tokens = work / "tokens.npy"
    write_tokens(tokens, args, vocab_size)

    env = {**os.environ, **({"ACCELERATE_USE_CPU": "1"} if args.cpu else {})}
    results = {}
    for name, launch in settings(args).items():
        run_dir = work / name.replace(" ", "").replace(",", "_")
        command = [
            sys.executable, "-m", "accelerate.commands.launch", *launch,
            "--num_machines", "1", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "mambaverse", "train",
            f"model.name={args.model}", f"model.vocab_size={vocab_size}",
            "data.name=tokens", f"data.path={tokens}", f"data.seq_len={args.seq_len}",
            "data.test_fraction=0.02", f"batch_size={args.batch}", f"max_steps={args.steps}",
            f"log_every={args.log_every}", "schedule.warmup_steps=10", f"output_dir={run_dir}",
        ]  # fmt: skip
        print(f"== {name}: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, env=env)
        results[name] = throughput(run_dir, args.seq_len)

    single = next(iter(results.values()))["samples_per_s"]
    for result in results.values():
        result["speedup"] = result["samples_per_s"] / single
    device = "cpu" if args.cpu else _gpu_name()
    report = {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "model": args.model,
        "parameters": mambaverse.count_parameters(args.model),
        "seq_len": args.seq_len,
        "batch_per_process": args.batch,
        "steps": args.steps,
        "precision": "no" if args.cpu else "bf16",
        "results": results,
    }
    (args.out / "ddp_scaling.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"`python examples/benchmarks/ddp_scaling.py{' --cpu' if args.cpu else ''}` on {device}, "
        f"{report['date']}: {args.model} ({report['parameters'] / 1e6:.0f}M parameters), "
        f"{report['precision']}, {args.batch} sequences of {args.seq_len} tokens per process and step.",
        "",
        "| setting | samples/s | tokens/s | vs one |",
        "| --- | --- | --- | --- |",
        *(
            f"| {name} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x |"
            for name, r in results.items()
        ),
    ]
    (args.out / "ddp_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _gpu_name() -> str:
    import torch

    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


if __name__ == "__main__":
    raise SystemExit(main())
