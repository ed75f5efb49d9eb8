"""``mambaverse bench scaling``: Mamba, Mamba-2, a hybrid and a Transformer of matched parameter
count (see :mod:`.language_models`), against sequence length.

Training: forward + backward (the `cross_entropy` op against random targets, no optimizer step) of
``batch × length`` random tokens, with ``batch = max(1, tokens_per_batch // length)`` so that
every length does about the same work per step until the batch reaches 1; tokens/s and peak
memory per length, out-of-memory marked as such. Tokens/s twice: the median of steps each
waited for (``tokens_per_s``), and steps issued back to back (``tokens_per_s_back_to_back``,
how a training loop that does not synchronize every step runs: the host prepares the next step
while the device computes this one; :mod:`.measure`).

Generation: prefill a random context, then decode one token at a time (:mod:`.decoding`), at
each context length and batch size: decode tokens/s, the decoding state's size (fixed for SSM
layers, the KV cache for attention layers) and the peak memory while decoding.

The Transformer is measured once per attention kernel that runs here (Triton, torch SDPA).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from mambaverse.errors import ConfigError
from mambaverse.kernels import cross_entropy

from .decoding import measure_decoding
from .language_models import SIZES, attention_implementations, preset_family
from .measure import OK, SKIPPED, Deadline, failure, free_memory, graphed, measure
from .report import (
    add_common_options,
    apply_defaults,
    byte_size,
    cell,
    int_list,
    line_panel,
    name_list,
    new_figure,
    print_table,
    resolve_device,
    save_figure,
    si,
    write_record,
)

SUITE = "scaling"
MODELS = ["mamba", "mamba2", "hybrid", "transformer"]
FULL = {
    "size": "130m",
    "models": MODELS,
    "lengths": [1024, 2048, 4096, 8192, 16384, 32768, 65536],
    "tokens_per_batch": 16384,
    "contexts": [1024, 4096, 16384, 65536],
    "gen_batches": [1, 64],
    "gen_tokens": 32,
    "warmup": 2,
    "repeats": 5,
}
SMOKE = {
    "size": "micro",
    "models": MODELS,
    "lengths": [32, 64],
    "tokens_per_batch": 64,
    "contexts": [16, 32],
    "gen_batches": [1, 2],
    "gen_tokens": 3,
    "warmup": 1,
    "repeats": 1,
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, smoke="micro models, lengths 32-64 (a CPU smoke test)")
    parser.add_argument("--size", choices=SIZES, help="model size: the Mamba presets' (130m)")
    parser.add_argument("--models", type=name_list, help=f"of {', '.join(MODELS)} (default: all)")
    parser.add_argument(
        "--attention",
        type=name_list,
        default=None,
        help="attention kernels for the Transformer (default: each one that runs here, the "
        "plain-math reference left out)",
    )
    parser.add_argument("--lengths", type=int_list, help="training lengths (1024,2048,...,65536)")
    parser.add_argument(
        "--tokens-per-batch", type=int, help="batch = max(1, this // length) (16384)"
    )
    parser.add_argument(
        "--contexts", type=int_list, help="generation context lengths (1024,4096,16384,65536)"
    )
    parser.add_argument("--gen-batches", type=int_list, help="generation batch sizes (1,64)")
    parser.add_argument("--gen-tokens", type=int, help="decode steps timed per point (32)")
    parser.add_argument(
        "--parts", type=name_list, default=["train", "generate"], help="train, generate or both"
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time each training step replayed from one CUDA graph (forward + backward "
        "captured after warm-up, every model alike: the host's launch time left out)",
    )


def training_step(model: torch.nn.Module, batch: int, length: int, device: torch.device):
    """One forward and backward on random tokens (a closure, for :func:`measure`)."""
    vocab = model.vocab_size
    input_ids = torch.randint(0, vocab, (batch, length), device=device)
    targets = torch.randint(0, vocab, (batch, length), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids)  # (B, L, padded vocab)
        cross_entropy(logits.flatten(0, 1), targets.flatten()).mean().backward()

    return step


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device(args)
    if args.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph: CUDA graphs need a CUDA device, not {device.type}")
    settings = apply_defaults(args, FULL, SMOKE)
    deadline = Deadline(args.time_budget)
    impls = args.attention or attention_implementations(device, dtype)
    settings["attention"] = impls
    specs = preset_family(args.size, models=args.models, attention_impls=impls)
    training: list[dict[str, Any]] = []
    generation: list[dict[str, Any]] = []
    for spec in specs:
        base = {"model": spec.label, "params": spec.count_parameters()}
        print(f"{spec.label}: {base['params']:,} parameters", flush=True)
        model = spec.build(device, dtype)
        if "train" in args.parts:
            model.train()
            for length in args.lengths:
                batch = max(1, args.tokens_per_batch // length)
                row = {**base, "length": length, "batch": batch}
                if deadline.passed():
                    training.append({**row, "status": SKIPPED})
                    continue
                step = training_step(model, batch, length, device)
                m = measure(step, device, args.warmup, args.repeats, back_to_back=True)
                row.update(status=m.status, ms=m.ms, peak_bytes=m.peak_bytes)
                if m.ok and args.cuda_graph:
                    row.update(measure_graphed(step, batch * length, device, args))
                if m.ok:
                    row["tokens_per_s"] = batch * length * 1e3 / m.ms
                    row["ms_back_to_back"] = m.back_to_back_ms
                    row["tokens_per_s_back_to_back"] = batch * length * 1e3 / m.back_to_back_ms
                training.append(row)
                print(f"  train L={length} B={batch}: {training_cell(row)} "
                      "(tokens/s synchronized (back to back) / peak)", flush=True)  # fmt: skip
            model.zero_grad(set_to_none=True)
            free_memory(device)
        if "generate" in args.parts:
            model.eval()
            for batch in args.gen_batches:
                for context in args.contexts:
                    row = {**base, "batch": batch, "context": context}
                    if deadline.passed():
                        generation.append({**row, "status": SKIPPED})
                        continue
                    prompt = torch.randint(0, model.vocab_size, (batch, context), device=device)
                    row.update(measure_decoding(model, prompt, args.gen_tokens, device))
                    generation.append(row)
                    print(f"  generate B={batch} context={context}: "
                          f"{cell(row, 'decode_tokens_per_s', si)} tok/s, state "
                          f"{cell(row, 'state_bytes', byte_size)}", flush=True)  # fmt: skip
        del model
        free_memory(device)
        # Saved after every model: a run stopped by its time limit keeps what it measured.
        results = {"training": training, "generation": generation}
        record = write_record(args.out, SUITE, args, device, settings, results)

    show(training, generation, args)
    figure = plot(training, generation, args, device)
    print(f"wrote {record} and {figure}")
    return 0


def measure_graphed(
    step: Any, tokens: int, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    """The training step replayed from a CUDA graph: its status, ms and tokens/s."""
    try:
        replay = graphed(step)
    except Exception as err:  # what breaks the capture is a result too
        return {"graph_status": failure(err)}
    m = measure(replay, device, args.warmup, args.repeats)
    del replay
    if not m.ok:
        return {"graph_status": m.status}
    return {"graph_status": OK, "ms_graph": m.ms, "tokens_per_s_graph": tokens * 1e3 / m.ms}


def training_cell(row: dict[str, Any]) -> str:
    """A training point's cell: tokens/s of steps waited for (of steps back to back) / peak
    memory, or the status of a point that did not run."""
    if row.get("status", OK) != OK:
        return row["status"]
    graph = ""
    if "graph_status" in row:  # --cuda-graph
        graph = ", graph " + (
            si(row["tokens_per_s_graph"]) if row["graph_status"] == OK else row["graph_status"]
        )
    return (
        f"{si(row['tokens_per_s'])} ({si(row['tokens_per_s_back_to_back'])}{graph}) / "
        f"{byte_size(row['peak_bytes'])}"
    )


def show(training: list[dict], generation: list[dict], args: argparse.Namespace) -> None:
    def by(rows: list[dict], key: str, fields: tuple[str, ...]) -> list[dict]:
        table: dict[tuple, dict] = {}
        for r in rows:
            entry = table.setdefault(tuple(r[f] for f in fields), {f: r[f] for f in fields})
            entry[r[key]] = r
        return list(table.values())

    def point(key: Any, render) -> Any:
        return lambda entry: render(entry[key]) if key in entry else "-"

    if training:
        columns = [("model", lambda e: e["model"])] + [
            (
                f"L={n}",
                point(n, training_cell),
            )
            for n in args.lengths
        ]
        print_table("training: forward+backward tokens/s (steps back to back) / peak memory",
                    columns, by(training, "length", ("model",)))  # fmt: skip
    if generation:
        columns = [("model", lambda e: e["model"]), ("batch", lambda e: str(e["batch"]))] + [
            (f"context {n}", point(n, lambda r: f"{cell(r, 'decode_tokens_per_s', si)} / "
                                               f"state {cell(r, 'state_bytes', byte_size)}"))
            for n in args.contexts
        ]  # fmt: skip
        print_table("generation: decode tokens/s / decoding state", columns,
                    by(generation, "context", ("model", "batch")))  # fmt: skip


def plot(training: list[dict], generation: list[dict], args: argparse.Namespace, device):
    gib_scale = 2.0**-30
    panels: list[tuple[list[dict], str, str, str, str, float]] = []
    if training:
        panels += [
            (training, "length", "tokens_per_s", "training: forward+backward", "tokens/s", 1.0),
            (
                training,
                "length",
                "tokens_per_s_back_to_back",
                "training: back to back",
                "tokens/s",
                1.0,
            ),
            (training, "length", "peak_bytes", "training: peak memory", "GiB", gib_scale),
        ]
    for batch in args.gen_batches if generation else []:
        rows = [r for r in generation if r["batch"] == batch]
        panels += [
            (rows, "context", "decode_tokens_per_s", f"generation, batch {batch}: decode", "tokens/s", 1.0),
            (rows, "context", "state_bytes", f"generation, batch {batch}: decoding state", "GiB", gib_scale),
        ]  # fmt: skip
    fig, axes = new_figure(len(panels), f"{args.size} language models on {device.type}")
    for ax, (rows, x, y, title, unit, scale) in zip(axes, panels):
        line_panel(ax, rows, x, y, "model", title, unit, logy=True, scale=scale)
    return save_figure(fig, args.out, SUITE)
