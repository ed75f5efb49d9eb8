"""Cobra (about 1B parameters) against the same towers with a matched Transformer, at long contexts.

The measurement of issue 8: greedy decoding tokens/s of ``cobra_1b`` (DINOv2-B/14 at 336 px +
SigLIP-B/16 at 384 px, 576 image tokens, fused GELU-MLP projector, Mamba-790M) and of the very same
towers and projector with a Transformer language model of matched size (``hybrid_lm``: every layer
attention with rotary embeddings + SwiGLU MLP, KV cache, torch SDPA), when the context (image
tokens + prompt) is 4k and 16k tokens; also the decoding state's bytes and the peak memory while
decoding. The target: Cobra decodes at least 3× the Transformer's tokens/s at both contexts.

Both language models are measured twice on CUDA: eager steps, and each step replayed from a
captured CUDA graph (mamba_lm's ``decode_graph``; the Transformer's with static KV caches, which
attend over their whole capacity under a mask). Ratios: each Cobra against the eager
Transformer, and graph against graph (like for like). Text is never tokenised (random prompt ids): the VLM gets a one-word
offline tokenizer unless --tokenizer names one, so open_clip is not needed; the language models
keep their own vocabulary (mamba_790m's 50,277 ids).

It drives ``mambaverse bench generation`` (``mambaverse.bench.generation.measure_vlm``: towers +
projector time, one prefill, then the median of timed ``step`` calls with the recurrent state)
once per context, on one device, in one process, so the numbers are comparable.

    python examples/benchmarks/vlm_generation.py --contexts 4096,16384 --batches 1,8,16,32 \\
        --out runs/vlm_generation                       # GPU (bf16 by default on CUDA)
    python examples/benchmarks/vlm_generation.py --smoke   # cobra_tiny on the CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import torch

import mambaverse
from mambaverse.bench.generation import measure_both_ways, measure_vlm, transformer_specs
from mambaverse.bench.measure import free_memory
from mambaverse.bench.report import (
    add_common_options,
    apply_defaults,
    byte_size,
    cell,
    int_list,
    print_table,
    resolve_device,
    si,
    write_record,
)
from mambaverse.plugins.mamba_lm.decode_graph import device_refusal

SUITE = "vlm_generation"
TARGET_RATIO = 3.0
FULL = {
    "preset": "cobra_1b",
    "contexts": [4096, 16384],
    "batches": [1, 8, 16, 32],  # batch 1 is bound by the weights' bytes, larger by the KV cache's
    "new_tokens": 64,
    "warmup": 2,
    "repeats": 5,
}
SMOKE = {
    "preset": "cobra_tiny",
    "contexts": [32, 64],
    "batches": [1],
    "new_tokens": 3,
    "warmup": 1,
    "repeats": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_options(parser, smoke="cobra_tiny and short contexts on the CPU")
    parser.add_argument("--preset", help="the Cobra preset (cobra_1b)")
    parser.add_argument("--contexts", type=int_list, help="image + prompt tokens (4096,16384)")
    parser.add_argument("--batches", type=int_list, help="batch sizes (1,8,16,32)")
    parser.add_argument("--new-tokens", type=int, help="tokens decoded per point (64)")
    parser.add_argument("--attention", default="sdpa", help="the Transformer's attention kernel")
    parser.add_argument(
        "--tokenizer", help="a local Hugging Face tokenizer directory (default: a one-word one)"
    )
    parser.add_argument("--out", default="runs/vlm_generation", help="folder for the JSON record")
    args = parser.parse_args(argv)
    args.command_line = " ".join(["python", *sys.argv])
    return args


def offline_tokenizer(directory: str) -> str:
    """A Hugging Face tokenizer of one word, saved in ``directory``: the benchmark feeds random
    token ids, so the tokenizer only provides the <image> and end-of-text ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(directory)
    return directory


def measure_contexts(
    vlm: torch.nn.Module, label: str, args: argparse.Namespace, device, dtype
) -> list[dict[str, Any]]:
    """One model at every context: the prompt fills what the image tokens leave."""
    params = sum(p.numel() for p in vlm.language_model.parameters())
    rows = []
    for context in args.contexts:
        point = argparse.Namespace(**vars(args), prompt_tokens=context - args.image_tokens)
        for row in measure_vlm(vlm, label, params, point, device, dtype):
            rows.append({**row, "context": context})
    return rows


def ratios(rows: list[dict[str, Any]], cobra: str, transformer: str) -> list[dict[str, Any]]:
    """Cobra's decode tokens/s (the rows labelled ``cobra``) over the Transformer's (the rows
    labelled ``transformer``), per context and batch."""
    by_key = {(r["model"], r["context"], r["batch"]): r for r in rows}
    out = []
    for (model, context, batch), row in by_key.items():
        other = by_key.get((transformer, context, batch), {})
        if model != cobra or "decode_tokens_per_s" not in row or "decode_tokens_per_s" not in other:
            continue
        ratio = row["decode_tokens_per_s"] / other["decode_tokens_per_s"]
        out.append(
            {
                "cobra": cobra,
                "context": context,
                "batch": batch,
                "ratio": ratio,
                "meets_target": ratio >= TARGET_RATIO,
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = apply_defaults(args, FULL, SMOKE)
    try:
        device, dtype = resolve_device(args)
    except mambaverse.ConfigError as err:  # a one-line error, as `mambaverse bench` prints it
        raise SystemExit(f"vlm_generation: error: {err}") from None
    with tempfile.TemporaryDirectory() as scratch, torch.device(device):
        vlm = mambaverse.create_model(
            args.preset,
            max_length=max(args.contexts) + 4 * args.new_tokens,
            tokenizer=args.tokenizer or offline_tokenizer(scratch),
        )
    vlm = vlm.to(dtype).eval()
    with torch.inference_mode():
        image = torch.rand(1, 3, vlm.img_size, vlm.img_size, device=device, dtype=dtype)
        args.image_tokens = vlm.embed_images(image).shape[1]
    args.img_size = vlm.img_size
    if min(args.contexts) <= args.image_tokens:
        raise SystemExit(f"--contexts must exceed the {args.image_tokens} image tokens")

    lm_preset = vlm.mambaverse_config["config"]["language_model"]
    measure = partial(measure_contexts, args=args, device=device, dtype=dtype)
    cobra = f"{args.preset} ({lm_preset})"
    rows = measure_both_ways(vlm, cobra, measure, device)
    refusal = device_refusal(device)
    if refusal is not None:
        print(f"CUDA-graph decoding not measured: {refusal}")
    (spec,) = transformer_specs(vlm, lm_preset, [args.attention])
    vlm.language_model = None  # free the Mamba model before the Transformer
    free_memory(device)
    vlm.language_model = spec.build(device, dtype).eval()
    transformer = f"same towers + {spec.label}"
    rows += measure_both_ways(vlm, transformer, measure, device)
    # Each Cobra against the eager Transformer, then like for like (both captured); pairs whose
    # rows were not measured (no graph off CUDA) give no ratio.
    pairs = [
        (f"{cobra}, eager", f"{transformer}, eager"),
        (f"{cobra}, CUDA graph", f"{transformer}, eager"),
        (f"{cobra}, CUDA graph", f"{transformer}, CUDA graph"),
    ]
    summary = [point for cobra, other in pairs for point in ratios(rows, cobra, other)]
    show(rows, summary)
    record = write_record(
        args.out, SUITE, args, device, settings, {"rows": rows, "ratios": summary}
    )
    print(f"wrote {record}")
    return {"rows": rows, "ratios": summary, "record": str(record)}


def show(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> None:
    columns = [
        ("model", lambda r: r["model"]),
        ("LM params", lambda r: si(r.get("lm_params"))),
        ("context", lambda r: str(r["context"])),
        ("batch", lambda r: str(r["batch"])),
        ("prefill ms", lambda r: cell(r, "prefill_ms", lambda v: f"{v:.1f}")),
        ("decode tok/s", lambda r: cell(r, "decode_tokens_per_s", si)),
        ("state", lambda r: cell(r, "state_bytes", byte_size)),
        ("decode peak", lambda r: cell(r, "decode_peak_bytes", byte_size)),
    ]
    print_table("VLM decoding at long contexts", columns, rows)
    for point in summary:
        verdict = "meets" if point["meets_target"] else "MISSES"
        print(
            f"context {point['context']}, batch {point['batch']}: {point['cobra']} / "
            f"Transformer = {point['ratio']:.2f}× ({verdict} the {TARGET_RATIO:g}× target)"
        )


if __name__ == "__main__":
    result = main()
    Path(result["record"]).with_suffix(".ratios.json").write_text(json.dumps(result["ratios"]))
