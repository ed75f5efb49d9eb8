"""``mambaverse bench generation``: a Cobra-style VLM against the same vision towers with a
Transformer language model of matched size.

One ``cobra`` model is built (towers, projector, a Mamba language model preset; random weights),
measured, then its language model is replaced by a Transformer (``hybrid_lm``, attention + MLP
layers, the layer count matching the Mamba model's parameters, one per attention kernel) and
measured again, so the towers and the projector are the very same modules.

Per language model and batch size: the towers + projector time, the prefill of image tokens +
prompt, the median decode step (:mod:`.decoding`), and the end-to-end rate of answering:
``batch × new_tokens / (towers + prefill + new_tokens × step)``.

On CUDA every language model is measured twice: eager steps, and each step replayed from its
captured CUDA graph (Cobra's what ``generate`` does there by default; the Transformers' with
static KV caches, ``generate(cuda_graph=True)``). Compare like with like.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

import mambaverse
from mambaverse.errors import ConfigError
from mambaverse.plugins.mamba_lm.decode_graph import clear_decode_graphs, device_refusal

from .decoding import GraphDecoding, measure_decoding
from .language_models import LMSpec, attention_implementations, lm_family
from .measure import SKIPPED, Deadline, free_memory, measure
from .report import (
    add_common_options,
    apply_defaults,
    byte_size,
    cell,
    int_list,
    new_figure,
    print_table,
    resolve_device,
    save_figure,
    si,
    write_record,
)

SUITE = "generation"
FULL = {
    "preset": "cobra_3b",  # DINOv2-L + SigLIP-So400m at 384 px (729 image tokens), Mamba-2.8B
    "batches": [1, 8],
    "prompt_tokens": 32,
    "new_tokens": 64,
    "warmup": 2,
    "repeats": 5,
}
SMOKE = {
    "preset": "cobra_tiny",
    "batches": [1],
    "prompt_tokens": 4,
    "new_tokens": 3,
    "warmup": 1,
    "repeats": 1,
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, smoke="the cobra_tiny preset (a CPU smoke test)")
    parser.add_argument("--preset", help="a cobra preset (cobra_3b; cobra_1b is smaller)")
    parser.add_argument(
        "--attention", type=lambda t: t.split(","), default=None, help="Transformer kernels"
    )
    parser.add_argument("--batches", type=int_list, help="batch sizes (1,8)")
    parser.add_argument("--prompt-tokens", type=int, help="text tokens after the image (32)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated (64)")


def transformer_specs(vlm: torch.nn.Module, lm: str, impls: list[str]) -> list[LMSpec]:
    """Transformers of the VLM's language model's size, width and vocabulary."""
    mamba = {**mambaverse.model_config(lm), "vocab_size": vlm.language_model.vocab_size}
    return lm_family(mamba, mamba, models=["transformer"], attention_impls=impls)


def measure_vlm(
    vlm: torch.nn.Module, label: str, params: int, args: argparse.Namespace, device, dtype
) -> list[dict[str, Any]]:
    rows = []
    for batch in args.batches:
        row: dict[str, Any] = {"model": label, "lm_params": params, "batch": batch}
        side = vlm.img_size
        images = torch.rand(batch, 3, side, side, device=device, dtype=dtype)
        with torch.inference_mode():
            towers = measure(lambda: vlm.embed_images(images), device, args.warmup, args.repeats)  # noqa: B023
            image_tokens = vlm.embed_images(images)
        vocab = vlm.language_model.vocab_size
        prompt = torch.randint(0, vocab, (batch, args.prompt_tokens), device=device)
        decoding = measure_decoding(
            vlm.language_model, prompt, args.new_tokens, device, prefix_embeds=image_tokens
        )
        row.update(decoding, image_tokens=image_tokens.shape[1], towers_ms=towers.ms)
        if decoding["status"] == "ok" and towers.ok:
            total_ms = (
                towers.ms
                + decoding["prefill_ms"]
                + args.new_tokens * decoding["decode_ms_per_step"]
            )
            row["answer_tokens_per_s"] = batch * args.new_tokens * 1e3 / total_ms
        rows.append(row)
        print(f"{label} batch {batch}: decode {cell(row, 'decode_tokens_per_s', si)} tok/s, "
              f"answer {cell(row, 'answer_tokens_per_s', si)} tok/s, "
              f"state {cell(row, 'state_bytes', byte_size)}", flush=True)  # fmt: skip
    return rows


def measure_both_ways(
    vlm: torch.nn.Module,
    label: str,
    measure_rows: Callable[[torch.nn.Module, str], list[dict[str, Any]]],
    device: torch.device | str,
) -> list[dict[str, Any]]:
    """``measure_rows(vlm, row_label)`` with eager steps (rows labelled ``"<label>, eager"``),
    then on CUDA with the captured graph's steps (``"<label>, CUDA graph"``)."""
    rows = measure_rows(vlm, f"{label}, eager")
    if device_refusal(device) is None:
        language_model = vlm.language_model
        vlm.language_model = GraphDecoding(language_model)
        rows += measure_rows(vlm, f"{label}, CUDA graph")
        vlm.language_model = language_model
        clear_decode_graphs(language_model)
    return rows


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device(args)
    settings = apply_defaults(args, FULL, SMOKE)
    if mambaverse.model_summary(args.preset)["backbone"] != "cobra":
        cobras = ", ".join(mambaverse.list_models(task="vlm"))
        raise ConfigError(f"--preset {args.preset}: not a Cobra VLM; VLM presets: {cobras}")
    deadline = Deadline(args.time_budget)
    impls = args.attention or attention_implementations(device, dtype)
    with torch.device(device):
        vlm = mambaverse.create_model(args.preset)
    vlm = vlm.to(dtype).eval()
    lm = mambaverse.model_config(args.preset)["language_model"]
    lm_params = sum(p.numel() for p in vlm.language_model.parameters())
    options = {"args": args, "device": device, "dtype": dtype}
    measure_lm = partial(measure_vlm, params=lm_params, **options)
    rows = measure_both_ways(vlm, f"{args.preset} ({lm})", measure_lm, device)
    write_record(args.out, SUITE, args, device, settings, {"rows": rows})
    for spec in transformer_specs(vlm, lm, impls):
        label = f"same towers + {spec.label}"
        if deadline.passed():
            rows += [{"model": label, "batch": b, "status": SKIPPED} for b in args.batches]
            continue
        vlm.language_model = None  # free the previous language model first
        free_memory(device)
        vlm.language_model = spec.build(device, dtype).eval()
        measure_lm = partial(measure_vlm, params=spec.count_parameters(), **options)
        rows += measure_both_ways(vlm, label, measure_lm, device)
        write_record(args.out, SUITE, args, device, settings, {"rows": rows})

    show(rows)
    record = write_record(args.out, SUITE, args, device, settings, {"rows": rows})
    figure = plot(rows, args, device)
    print(f"wrote {record} and {figure}")
    return 0


def show(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("model", lambda r: r["model"]),
        ("LM params", lambda r: si(r.get("lm_params"))),
        ("batch", lambda r: str(r["batch"])),
        ("towers ms", lambda r: cell(r, "towers_ms", lambda v: f"{v:.1f}")),
        ("prefill ms", lambda r: cell(r, "prefill_ms", lambda v: f"{v:.1f}")),
        ("decode tok/s", lambda r: cell(r, "decode_tokens_per_s", si)),
        ("answer tok/s", lambda r: cell(r, "answer_tokens_per_s", si)),
        ("state", lambda r: cell(r, "state_bytes", byte_size)),
        ("decode peak", lambda r: cell(r, "decode_peak_bytes", byte_size)),
    ]
    print_table("VLM generation (image tokens + prompt, then greedy decoding)", columns, rows)


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device):
    fig, axes = new_figure(
        2, f"VLM generation: {args.preset} vs a matched Transformer, {device.type}"
    )
    models = list(dict.fromkeys(r["model"] for r in rows))
    for ax, key, title in (
        (axes[0], "decode_tokens_per_s", "decode tokens/s"),
        (axes[1], "answer_tokens_per_s", f"answer tokens/s ({args.new_tokens} new tokens)"),
    ):
        width = 0.8 / max(1, len(models))
        for i, model in enumerate(models):
            values = {r["batch"]: r.get(key) or 0.0 for r in rows if r["model"] == model}
            xs = [j + i * width for j in range(len(args.batches))]
            ax.bar(xs, [values.get(b, 0.0) for b in args.batches], width, label=model)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(args.batches))])
        ax.set_xticklabels([f"batch {b}" for b in args.batches])
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, args.out, SUITE)
