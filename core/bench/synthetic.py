"""``mambaverse bench synthetic``: the Mamba paper's synthetic tasks and length extrapolation.

Gu & Dao (2023), section 4.1: *selective copying* (remember the data tokens scattered among
noise, then reproduce them in order) and *induction heads* (after a trigger token appears a
second time, produce the token that followed its first appearance). The paper trains 2-layer
models of width 64 with vocabulary 16 on induction heads at length 256, then tests at longer
lengths: Mamba stays perfect up to 2^20 tokens while attention models fail beyond ~2x.

Here each model (Mamba, Mamba-2, hybrid, attention; all ``n_layer`` layers of width ``d_model``)
is trained on fresh random batches at ``train_length`` (after an optional curriculum of shorter
lengths, never longer) and evaluated at ``factor × train_length`` for each factor (default 1,
2, 4, 16, 64). The task generators are the training
datasets' (``mambaverse.train.data.tokens``), so ``mambaverse train`` sees the same tasks.

Accuracy: induction heads, the share of sequences whose final prediction is right; selective
copying, the share of the copied tokens produced right. Chance is 1 / (vocab_size - 1) and
1 / (vocab_size - 2).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from torch import nn

from mambaverse.train.config import ScheduleSection
from mambaverse.train.data.tokens import (
    InductionHeadsOptions,
    SelectiveCopyingOptions,
    induction_heads_sample,
    selective_copying_sample,
)
from mambaverse.train.optim import lr_factor, parameter_groups
from mambaverse.train.tasks import score

from .language_models import LMSpec, lm_family
from .measure import OK, SKIPPED, Deadline, failure
from .report import (
    add_common_options,
    apply_defaults,
    cell,
    int_list,
    name_list,
    new_figure,
    print_table,
    resolve_device,
    save_figure,
    write_record,
)

SUITE = "synthetic"
TASKS: dict[str, tuple[type, Callable[..., tuple[np.ndarray, np.ndarray]]]] = {
    "induction_heads": (InductionHeadsOptions, induction_heads_sample),
    "selective_copying": (SelectiveCopyingOptions, selective_copying_sample),
}
MODELS = ("mamba", "mamba2", "hybrid", "transformer")

# Full run (a GPU, or patience) and --smoke (CPU seconds). An option given on the command line
# wins over both.
FULL = {
    "tasks": ["induction_heads", "selective_copying"],
    "models": list(MODELS),
    "train_length": 256,
    "factors": [1, 2, 4, 16, 64],
    "steps": 2000,
    "batch": 32,
    "eval_samples": 256,
    "eval_tokens": 2**21,
}
SMOKE = {
    "tasks": ["induction_heads", "selective_copying"],
    "models": list(MODELS),
    "train_length": 16,
    "factors": [1, 2],
    "steps": 3,
    "batch": 4,
    "eval_samples": 8,
    "eval_tokens": 256,
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, smoke="3 training steps at length 16, CPU seconds (a smoke test)")
    parser.add_argument("--tasks", type=name_list, help=f"of {', '.join(TASKS)} (default: both)")
    parser.add_argument("--models", type=name_list, help=f"of {', '.join(MODELS)} (default: all)")
    parser.add_argument("--train-length", type=int, help="training sequence length (256)")
    parser.add_argument(
        "--factors", type=int_list, help="test lengths / train length (1,2,4,16,64)"
    )
    parser.add_argument("--steps", type=int, help="training steps, fresh random batches (2000)")
    parser.add_argument("--batch", type=int, help="training batch size (32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    parser.add_argument("--d-model", type=int, default=64, help="model width (paper: 64)")
    parser.add_argument("--n-layer", type=int, default=2, help="layers of every model (paper: 2)")
    parser.add_argument("--d-state", type=int, default=16, help="SSM state size of Mamba layers")
    parser.add_argument("--vocab", type=int, default=16, help="vocabulary, special tokens included")
    parser.add_argument("--copy-tokens", type=int, default=16, help="selective copying: tokens")
    parser.add_argument("--eval-samples", type=int, help="test sequences per length, at most (256)")
    parser.add_argument(
        "--eval-tokens",
        type=int,
        help="test tokens per length, at most (2^21): fewer sequences at long lengths, never "
        "under 32",
    )
    parser.add_argument(
        "--stop-accuracy",
        type=float,
        default=None,
        help="stop training once the last 50 steps' training accuracy reaches this (e.g. 1.0)",
    )
    parser.add_argument(
        "--curriculum",
        type=curriculum,
        default=None,
        metavar="LENGTH:UNTIL,...",
        help="shorter lengths first: '16:400,64:800' trains steps 0-399 at length 16, 400-799 "
        "at 64, the rest at --train-length (never longer: the test lengths stay unseen)",
    )
    parser.add_argument("--seed", type=int, default=0)


def curriculum(text: str) -> list[tuple[int, int]]:
    """'16:400,64:800' -> [(16, 400), (64, 800)]: (length, first step after it) (argparse type)."""
    stages = []
    for part in text.split(","):
        length, sep, until = part.strip().partition(":")
        if not sep or not length.isdigit() or not until.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected LENGTH:UNTIL,... such as 16:400,64:800, got {text!r}"
            )
        stages.append((int(length), int(until)))
    if [until for _, until in stages] != sorted(until for _, until in stages):
        raise argparse.ArgumentTypeError(
            f"--curriculum: the UNTIL steps must increase, got {text!r}"
        )
    return stages


# -- data ---------------------------------------------------------------------------------------
def make_batch(
    task: str, rng: np.random.Generator, size: int, length: int, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` fresh sequences of the task at ``length``: input_ids and labels (size, L')."""
    options_type, sample = TASKS[task]
    extra = {"num_tokens": args.copy_tokens} if task == "selective_copying" else {}
    options = options_type(name=task, seq_len=length, vocab_size=args.vocab, **extra)
    pairs = [sample(rng, options) for _ in range(size)]
    return (
        torch.from_numpy(np.stack([ids for ids, _ in pairs])),
        torch.from_numpy(np.stack([labels for _, labels in pairs])),
    )


def family(args: argparse.Namespace, models: list[str]) -> list[LMSpec]:
    """The paper's small models: every one ``n_layer`` layers of width ``d_model``."""
    common = {"vocab_size": args.vocab, "pad_vocab_size_multiple": 8, "d_model": args.d_model}
    ssm = {"d_state": args.d_state, "d_conv": 4, "expand": 2}
    mamba = {**common, "n_layer": args.n_layer, "mixer": "mamba", "mixer_config": ssm}
    head_dim = 16  # 4 attention heads at width 64
    mamba2_ssm = {**ssm, "headdim": head_dim, "chunk_size": 64}
    mamba2 = {**mamba, "mixer": "mamba2", "mixer_config": mamba2_ssm}
    return lm_family(mamba, mamba2, models, match_params=False, head_dim=head_dim)


# -- training and testing -----------------------------------------------------------------------
def train(
    model: nn.Module, task: str, args: argparse.Namespace, device: torch.device, label: str
) -> dict[str, Any]:
    """Train on fresh batches; returns the loss and accuracy history and the time taken."""
    rng = np.random.default_rng([args.seed, 0])
    # Weight decay 0.1 on matrices only: decaying Mamba's Δ bias towards 0 would raise Δ and
    # shorten the memory (what extrapolation needs), so biases and norms are exempt, as usual.
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=args.lr)
    schedule = ScheduleSection(warmup_steps=max(1, args.steps // 10), min_lr_ratio=0.1)
    model.train()
    history: list[dict[str, float]] = []
    recent: list[float] = []
    start = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, args.steps, schedule)
        length = next((n for n, until in args.curriculum or () if step < until), args.train_length)
        input_ids, labels = (t.to(device) for t in make_batch(task, rng, args.batch, length, args))
        outcome = score(model(input_ids), labels)
        loss = outcome.mean_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss, accuracy = float(loss.detach()), float(outcome.correct.sum() / outcome.count.sum())
        # Stopping looks at the training length only, not at the curriculum's shorter one.
        recent = [*recent[-49:], accuracy] if length == args.train_length else []
        if step % 25 == 0 or step == args.steps - 1:
            history.append({"step": step, "loss": loss, "accuracy": accuracy})
            print(
                f"  {task} {label}: step {step}/{args.steps} loss {loss:.4f} "
                f"acc {accuracy:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        reached = args.stop_accuracy is not None and len(recent) == 50
        if reached and sum(recent) / 50 >= args.stop_accuracy:
            history.append({"step": step, "loss": loss, "accuracy": accuracy})
            print(f"  {task} {label}: stopped at step {step} (training accuracy reached)")
            break
    return {"history": history, "steps_run": step + 1, "train_s": time.perf_counter() - start}


@torch.inference_mode()
def evaluate(
    model: nn.Module, task: str, length: int, args: argparse.Namespace, device: torch.device
) -> tuple[float, int]:
    """Accuracy on fresh test sequences at ``length``, and how many sequences were tested."""
    model.eval()
    samples = max(32, min(args.eval_samples, args.eval_tokens // length))
    samples = min(samples, args.eval_samples)
    per_batch = max(1, min(samples, 2**17 // length))  # keep activations bounded at long lengths
    rng = np.random.default_rng([args.seed, 1, length])
    hits = total = 0
    for first in range(0, samples, per_batch):
        size = min(per_batch, samples - first)
        input_ids, labels = (t.to(device) for t in make_batch(task, rng, size, length, args))
        answered = int((labels != -100).sum(1).max())  # labelled positions are the last ones
        logits = model(input_ids, num_last_tokens=answered)
        outcome = score(logits, labels[:, -answered:])
        hits += int(outcome.correct.sum())
        total += int(outcome.count.sum())
    return hits / total, samples


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device(args, cuda_dtype="float32")  # training: float32 weights
    settings = {**apply_defaults(args, FULL, SMOKE), **vars_of(args)}
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    deadline = Deadline(args.time_budget)
    specs = family(args, args.models)
    results: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    for task in args.tasks:
        for spec in specs:
            base = {"task": task, "model": spec.label, "params": spec.count_parameters()}
            if deadline.passed():
                results += [
                    {**base, "factor": f, "length": f * args.train_length, "status": SKIPPED}
                    for f in args.factors
                ]
                continue
            try:
                results += train_and_test(spec, task, base, training, args, device, dtype)
            except Exception as err:  # one failing model must not end the suite
                status = failure(err)
                results += [
                    {**base, "factor": f, "length": f * args.train_length, "status": status}
                    for f in args.factors
                ]
            # Saved after every model: a run stopped by its time limit keeps what it measured.
            write_record(args.out, SUITE, args, device, settings,
                         {"results": results, "training": training})  # fmt: skip

    show(results, args)
    record = write_record(args.out, SUITE, args, device, settings,
                          {"results": results, "training": training})  # fmt: skip
    figure = plot(results, training, args)
    print(f"wrote {record} and {figure}")
    return 0


def train_and_test(
    spec: LMSpec,
    task: str,
    base: dict[str, Any],
    training: list[dict[str, Any]],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    """Train one model on the task (its history appended to ``training``), then test it at
    every length; one result row per length."""
    torch.manual_seed(args.seed)
    model = spec.build(device, dtype)
    print(f"{task}: training {spec.label} ({base['params']:,} parameters)", flush=True)
    training.append({**base, **train(model, task, args, device, spec.label)})
    rows = []
    for factor in args.factors:
        length = factor * args.train_length
        accuracy, samples = evaluate(model, task, length, args, device)
        print(f"  {task} {spec.label}: {factor}x ({length}) accuracy {accuracy:.4f} "
              f"on {samples} sequences", flush=True)  # fmt: skip
        rows.append({**base, "factor": factor, "length": length, "accuracy": accuracy,
                     "samples": samples, "status": OK})  # fmt: skip
    return rows


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("lr", "d_model", "n_layer", "d_state", "vocab", "copy_tokens", "stop_accuracy",
            "curriculum", "seed")  # fmt: skip
    return {key: getattr(args, key) for key in keys}


def show(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """One table per task: a row per model, a column per test length."""
    for task in args.tasks:
        mine = [r for r in results if r["task"] == task]
        table = []
        for model in dict.fromkeys(r["model"] for r in mine):
            points = {r["factor"]: r for r in mine if r["model"] == model}
            row = {"model": model, "params": f"{next(iter(points.values()))['params']:,}"}
            for factor, point in points.items():
                row[factor] = cell(point, "accuracy", lambda a: f"{a:.3f}")
            table.append(row)
        columns = [("model", itemgetter("model")), ("params", itemgetter("params"))] + [
            (f"{f}x = {f * args.train_length}", itemgetter(f)) for f in args.factors
        ]
        print_table(f"{task}: accuracy, trained at length {args.train_length}", columns, table)


def plot(results: list[dict[str, Any]], training: list[dict[str, Any]], args: argparse.Namespace):
    from .report import line_panel

    fig, axes = new_figure(
        2 * len(args.tasks), f"synthetic tasks, trained at length {args.train_length}"
    )
    for i, task in enumerate(args.tasks):
        rows = [r for r in results if r["task"] == task]
        ax = axes[2 * i]
        line_panel(ax, rows, "length", "accuracy", "model", f"{task}: test accuracy", "accuracy")
        ax.axvline(args.train_length, color="grey", ls=":", lw=1)
        ax.set_ylim(-0.02, 1.02)
        curves = axes[2 * i + 1]
        for j, run_ in enumerate(t for t in training if t["task"] == task):
            steps = [h["step"] for h in run_["history"]]
            curves.plot(
                steps, [h["loss"] for h in run_["history"]], color=f"C{j}", label=run_["model"]
            )
        curves.set_yscale("log")
        curves.set_xlabel("training step")
        curves.set_ylabel("training loss")
        curves.set_title(f"{task}: training loss", fontsize=9)
        curves.grid(alpha=0.3)
        curves.legend(fontsize=7)
    return save_figure(fig, args.out, SUITE)
