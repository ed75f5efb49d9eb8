"""``mambaverse bench synthetic``: the Mamba paper's synthetic tasks and length extrapolation.

Gu & Dao (2023), section 4.1: *selective copying* (remember the data tokens scattered among
noise, then reproduce them in order) and *induction heads* (after a trigger token appears a
second time, produce the token that followed its first appearance). The paper trains 2-layer
models with vocabulary 16 on induction heads at length 256, then tests at lengths 2^6 .. 2^20:
Mamba (width 64) stays perfect up to 2^20 while the attention models fail beyond ~2x.

The defaults are the paper's induction-heads recipe (appendix E.1): fresh random batches of 8
every step, Adam without weight decay at a constant learning rate (1e-3 for Mamba, 2e-4 for
attention, which "did not learn at 1e-3"), 204,800 steps for Mamba (the attention models got
409,600), no gradient clipping or warm-up named. Its attention models are 2 layers of
multi-head attention only (8 heads, width 128, no MLP); ``transformer`` here is that model with
rotary embeddings (the paper's MHA-RoPE). Mamba-2 and the hybrid are not in the paper; they
take Mamba's width and learning rate. ``--train-seconds`` caps each model's training time (the
steps reached are recorded): on a budget that, not the step count, ends training.

Each model is evaluated at ``factor × train_length`` for each factor (default 1, 2, 4, 16, 64)
on fixed test sequences. The task generators are the training datasets'
(``mambaverse.train.data.tokens``), so ``mambaverse train`` sees the same tasks.

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

from mambaverse.errors import unknown_name
from mambaverse.train.config import ScheduleSection
from mambaverse.train.data.base import IGNORE_INDEX
from mambaverse.train.data.tokens import (
    InductionHeadsOptions,
    SelectiveCopyingOptions,
    induction_heads_batch,
    selective_copying_batch,
)
from mambaverse.train.optim import lr_factor, parameter_groups
from mambaverse.train.tasks import Outcome, score

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
    "induction_heads": (InductionHeadsOptions, induction_heads_batch),
    "selective_copying": (SelectiveCopyingOptions, selective_copying_batch),
}
MODELS = ("mamba", "mamba2", "hybrid", "transformer")
# Appendix E.1: Mamba learned best at 1e-3, the attention models only learned at 2e-4.
PAPER_LR = {"mamba": 1e-3, "mamba2": 1e-3, "hybrid": 1e-3, "transformer": 2e-4}
LOG_EVERY = 50  # steps between training-history points (and reads of the device's counters)

# Full run (a GPU, or patience) and --smoke (CPU seconds). An option given on the command line
# wins over both.
FULL = {
    "tasks": ["induction_heads", "selective_copying"],
    "models": list(MODELS),
    "train_length": 256,
    "factors": [1, 2, 4, 16, 64],
    "steps": 204_800,  # the paper's Mamba: 25 "epochs" of 8192 steps
    "batch": 8,
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
    parser.add_argument("--steps", type=int, help="training steps, fresh random batches (204800)")
    parser.add_argument("--batch", type=int, help="training batch size (8)")
    parser.add_argument(
        "--lr",
        type=per_model,
        default=None,
        metavar="LR | MODEL=LR,...",
        help="peak learning rate, for every model or per model (default: the paper's, "
        + ", ".join(f"{name} {lr:g}" for name, lr in PAPER_LR.items())
        + ")",
    )
    parser.add_argument(
        "--train-seconds",
        type=per_model,
        default=None,
        metavar="S | MODEL=S,...",
        help="stop training a model after this much wall time (default: no limit)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW's, on matrices (paper: none)"
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate after the warm-up: constant (paper) or cosine decay to a tenth",
    )
    parser.add_argument("--lr-warmup", type=int, default=0, help="linear warm-up steps (paper: 0)")
    parser.add_argument("--clip", type=float, default=None, help="gradient norm clip (paper: none)")
    parser.add_argument("--d-model", type=int, default=64, help="SSM models' width (paper: 64)")
    parser.add_argument(
        "--attention-d-model", type=int, default=128, help="attention model's width (paper: 128)"
    )
    parser.add_argument("--heads", type=int, default=8, help="attention model's heads (paper: 8)")
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
        "--curriculum",
        type=curriculum,
        default=None,
        metavar="LENGTH:UNTIL,...",
        help="shorter lengths first (not in the paper; on the CPU it made Mamba extrapolate far "
        "worse): '16:400,64:800' trains steps 0-399 at length 16, 400-799 at 64, the rest at "
        "--train-length (never longer: the test lengths stay unseen)",
    )
    parser.add_argument("--seed", type=int, default=0)


def per_model(text: str) -> dict[str, float]:
    """'1e-3' -> {'*': 0.001} (every model); 'mamba=1e-3,transformer=2e-4' -> those models
    (argparse type)."""
    values: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().rpartition("=")
        if sep and name not in MODELS:
            raise argparse.ArgumentTypeError(
                f"unknown model {name!r} in {text!r}: choose from {', '.join(MODELS)}"
            )
        try:
            values[name if sep else "*"] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected NUMBER or MODEL=NUMBER,..., got {text!r}"
            ) from None
    return values


def for_model(values: dict[str, float] | None, name: str, default: float | None) -> float | None:
    """The value of a :func:`per_model` option for model ``name``."""
    values = values or {}
    return values.get(name, values.get("*", default))


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
    options_type, batch = TASKS[task]
    extra = {"num_tokens": args.copy_tokens} if task == "selective_copying" else {}
    options = options_type(name=task, seq_len=length, vocab_size=args.vocab, **extra)
    input_ids, labels = batch(rng, size, options)
    return torch.from_numpy(input_ids), torch.from_numpy(labels)


def predict(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> Outcome:
    """The model's outcome on a batch (CPU tensors, moved here). The labelled positions are the
    last ones of every sequence, so only their logits are computed."""
    answered = int((labels != IGNORE_INDEX).sum(1).max())
    device = next(model.parameters()).device
    # non_blocking: a plain copy to the GPU would wait for all queued work, once a step
    logits = model(input_ids.to(device, non_blocking=True), num_last_tokens=answered)
    return score(logits, labels[:, -answered:].to(device, non_blocking=True))


def family(args: argparse.Namespace, models: list[str]) -> list[tuple[str, LMSpec]]:
    """(name, model) for each of ``models``: the paper's small models, ``n_layer`` layers each."""
    common = {"vocab_size": args.vocab, "pad_vocab_size_multiple": 8, "n_layer": args.n_layer}
    ssm = {"d_state": args.d_state, "d_conv": 4, "expand": 2}
    mamba = {**common, "d_model": args.d_model, "mixer": "mamba", "mixer_config": ssm}
    head_dim = 16  # the hybrid's attention: 4 heads at width 64
    mamba2_ssm = {**ssm, "headdim": head_dim, "chunk_size": 64}
    mamba2 = {**mamba, "mixer": "mamba2", "mixer_config": mamba2_ssm}
    # The paper's attention models: multi-head attention layers only (no MLP), 137K parameters.
    attention = {"num_heads": args.heads}  # rotary embeddings: MHA-RoPE
    mha = {**common, "d_model": args.attention_d_model, "mixer": "attention",
           "mixer_config": attention}  # fmt: skip
    specs = []
    for name in models:
        if name == "transformer":
            specs.append((name, LMSpec("MHA-RoPE", "mamba_lm", mha)))
        else:
            specs += [(name, s) for s in lm_family(mamba, mamba2, [name], match_params=False,
                                                    head_dim=head_dim)]  # fmt: skip
    return specs


# -- training and testing -----------------------------------------------------------------------
def train(
    model: nn.Module, name: str, task: str, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    """Train on fresh batches; returns the loss and accuracy history, the steps run, the
    learning rate and the time taken."""
    rng = np.random.default_rng([args.seed, 0])
    lr = for_model(args.lr, name, PAPER_LR[name])
    seconds = for_model(args.train_seconds, name, None)
    # Weight decay (paper: none) on matrices only: decaying Mamba's Δ bias towards 0 would raise
    # Δ and shorten the memory, so biases and norms are exempt. AdamW without decay is Adam.
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=lr)
    schedule = ScheduleSection(name=args.schedule, warmup_steps=args.lr_warmup, min_lr_ratio=0.1)
    model.train()
    history: list[dict[str, float]] = []
    # loss sum, hits, answers since the last history point; kept on the device, read every
    # LOG_EVERY steps, so the CPU never waits for the GPU in between.
    window = torch.zeros(3, device=next(model.parameters()).device)
    start = time.perf_counter()
    step = since = 0
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, args.steps, schedule)
        length = next((n for n, until in args.curriculum or () if step < until), args.train_length)
        outcome = predict(model, *make_batch(task, rng, args.batch, length, args))
        loss = outcome.mean_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        window += torch.stack(
            [loss.detach(), outcome.correct.sum().float(), outcome.count.sum().float()]
        )
        since += 1
        out_of_time = seconds is not None and time.perf_counter() - start >= seconds
        if step % LOG_EVERY == 0 or step == args.steps - 1 or out_of_time:
            loss_sum, hits, answers = window.tolist()
            point = {"step": step, "loss": loss_sum / since, "accuracy": hits / answers}
            history.append(point)
            window.zero_()
            since = 0
            if step % (20 * LOG_EVERY) == 0 or step == args.steps - 1 or out_of_time:
                print(f"  {task} {label}: step {step}/{args.steps} loss {point['loss']:.4f} "
                      f"acc {point['accuracy']:.3f} (lr {lr:g}, "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        if out_of_time:
            print(f"  {task} {label}: stopped at step {step} ({seconds:g} s of training)")
            break
    return {"history": history, "steps_run": step + 1, "batch": args.batch, "lr": lr,
            "train_s": time.perf_counter() - start}  # fmt: skip


@torch.inference_mode()
def evaluate(
    model: nn.Module, task: str, length: int, args: argparse.Namespace
) -> tuple[float, int]:
    """Accuracy on the fixed test sequences at ``length`` (seeded by it), and how many
    sequences were tested."""
    model.eval()
    samples = max(32, min(args.eval_samples, args.eval_tokens // length))
    samples = min(samples, args.eval_samples)
    per_batch = max(1, min(samples, 2**17 // length))  # keep activations bounded at long lengths
    rng = np.random.default_rng([args.seed, 1, length])
    hits = total = 0
    for first in range(0, samples, per_batch):
        size = min(per_batch, samples - first)
        outcome = predict(model, *make_batch(task, rng, size, length, args))
        hits += int(outcome.correct.sum())
        total += int(outcome.count.sum())
    return hits / total, samples


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device(args, cuda_dtype="float32")  # training: float32 weights
    settings = {**apply_defaults(args, FULL, SMOKE), **vars_of(args)}
    for task in args.tasks:
        if task not in TASKS:
            raise unknown_name("task (--tasks)", task, TASKS)
    deadline = Deadline(args.time_budget)
    specs = family(args, args.models)
    results: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    for task in args.tasks:
        for name, spec in specs:
            base = {"task": task, "model": spec.label, "params": spec.count_parameters()}
            if deadline.passed():
                results += [
                    {**base, "factor": f, "length": f * args.train_length, "status": SKIPPED}
                    for f in args.factors
                ]
                continue
            try:
                results += train_and_test(name, spec, task, base, training, args, device, dtype)
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
    name: str,
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
    training.append({**base, **train(model, name, task, args, spec.label)})
    rows = []
    for factor in args.factors:
        point = {**base, "factor": factor, "length": factor * args.train_length}
        try:
            accuracy, samples = evaluate(model, task, point["length"], args)
        except Exception as err:  # out of memory at one length (the paper's ✗) keeps the rest
            rows.append({**point, "status": failure(err)})
            continue
        print(f"  {task} {spec.label}: {factor}x ({point['length']}) accuracy {accuracy:.4f} "
              f"on {samples} sequences", flush=True)  # fmt: skip
        rows.append({**point, "accuracy": accuracy, "samples": samples, "status": OK})
    return rows


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("lr", "train_seconds", "weight_decay", "schedule", "lr_warmup", "clip", "d_model",
            "attention_d_model", "heads", "n_layer", "d_state", "vocab", "copy_tokens",
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
