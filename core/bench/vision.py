"""``mambaverse bench vision``: Vision Mamba presets against DeiT of matched size from timm.

Inference (no gradient) on random images at each resolution: images/s and peak memory. Each
pair is a mambaverse preset and a timm model of about its size (Vim-Ti 7M / DeiT-Ti 5.7M, Vim-S
26M / DeiT-S 22M), both built for that resolution (``img_size``) with random weights.

DeiT is measured twice: with timm's default fused attention (torch SDPA, memory linear in the
tokens) and with the attention matrix written out (``fused_attn = False``, as timm computed it
before SDPA and as in the Vim paper's comparison, memory quadratic in the tokens).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

import mambaverse
from mambaverse.errors import ConfigError, unknown_name

from .measure import SKIPPED, Deadline, free_memory, measure
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

SUITE = "vision"
DEIT_VARIANTS = ("sdpa", "explicit")
FULL = {
    "pairs": ["vim_tiny=deit_tiny_patch16_224", "vim_small=deit_small_patch16_224"],
    "resolutions": [224, 512, 1024, 1248],
    "batch": 16,
    "warmup": 2,
    "repeats": 5,
}
SMOKE = {
    "pairs": ["vim_micro=deit_tiny_patch16_224"],
    "resolutions": [32, 64],
    "batch": 2,
    "warmup": 1,
    "repeats": 1,
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_options(parser, smoke="vim_micro vs DeiT-Ti at 32 and 64 pixels (a CPU smoke test)")
    parser.add_argument(
        "--pairs",
        type=name_list,
        help="PRESET=TIMM_MODEL pairs "
        "(vim_tiny=deit_tiny_patch16_224,vim_small=deit_small_patch16_224)",
    )
    parser.add_argument("--resolutions", type=int_list, help="image sides (224,512,1024,1248)")
    parser.add_argument("--batch", type=int, help="images per forward (16)")


def build(
    kind: str, name: str, resolution: int, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """A mambaverse preset (kind "mamba") or a timm model (kind "sdpa" / "explicit")."""
    import timm

    with torch.device(device):
        if kind == "mamba":
            model = mambaverse.create_model(name, img_size=resolution)
        else:
            model = timm.create_model(name, pretrained=False, img_size=resolution)
            for module in model.modules():
                if hasattr(module, "fused_attn"):
                    module.fused_attn = kind == "sdpa"
    return model.to(dtype).eval()


def measure_model(
    kind: str,
    name: str,
    resolution: int,
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Parameters, median ms, images/s and peak memory of one model at one resolution."""
    model = build(kind, name, resolution, device, dtype)
    images = torch.randn(args.batch, 3, resolution, resolution, device=device, dtype=dtype)
    with torch.inference_mode():
        m = measure(lambda: model(images), device, args.warmup, args.repeats)
    result = {"params": sum(p.numel() for p in model.parameters()), "status": m.status,
              "ms": m.ms, "peak_bytes": m.peak_bytes}  # fmt: skip
    if m.ok:
        result["images_per_s"] = args.batch * 1e3 / m.ms
    return result


def check_pair(pair: str, resolutions: list[int]) -> tuple[str, str]:
    """``PRESET=TIMM_MODEL`` as (preset, timm name), both known, the preset built (on the meta
    device: no memory) at every resolution, so that a bad argument fails before any timing."""
    import timm

    preset, _, timm_name = pair.partition("=")
    if not timm_name:
        raise ConfigError(f"--pairs: {pair!r} is not PRESET=TIMM_MODEL")
    if mambaverse.model_summary(preset)["task"] != "vision":
        raise ConfigError(f"--pairs: {preset!r} is not a vision model")
    if not timm.is_model(timm_name):
        family = timm.list_models(timm_name.split("_")[0] + "*")  # deit_tinyy: the deits first
        raise unknown_name("timm model (--pairs)", timm_name, family or timm.list_models())
    for resolution in resolutions:
        try:
            with torch.device("meta"):
                mambaverse.create_model(preset, img_size=resolution)
        except ValueError as err:
            raise ConfigError(f"--resolutions {resolution}: {err}") from None
    return preset, timm_name


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_device(args)
    settings = apply_defaults(args, FULL, SMOKE)
    deadline = Deadline(args.time_budget)
    rows: list[dict[str, Any]] = []
    pairs = [check_pair(pair, args.resolutions) for pair in args.pairs]  # before any timing
    for preset, timm_name in pairs:
        for resolution in args.resolutions:
            for kind, name in [("mamba", preset), *((v, timm_name) for v in DEIT_VARIANTS)]:
                label = name if kind == "mamba" else f"{name.split('_patch')[0]} ({kind})"
                row = {"pair": preset, "model": label, "resolution": resolution,
                       "batch": args.batch}  # fmt: skip
                if deadline.passed():
                    rows.append({**row, "status": SKIPPED})
                    continue
                row.update(measure_model(kind, name, resolution, args, device, dtype))
                rows.append(row)
                print(f"{label} @ {resolution}: {cell(row, 'images_per_s', si)} images/s, "
                      f"peak {byte_size(row.get('peak_bytes'))}", flush=True)  # fmt: skip
                free_memory(device)
                # Saved after every point: a run stopped by its time limit keeps what it measured.
                write_record(args.out, SUITE, args, device, settings, {"rows": rows})

    ratios = compare(rows)
    show(rows, ratios, args)
    record = write_record(args.out, SUITE, args, device, settings, {"rows": rows, "ratios": ratios})
    figure = plot(rows, args, device)
    print(f"wrote {record} and {figure}")
    return 0


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair and resolution: how many times faster the Mamba model is than each DeiT, and
    what share of DeiT's peak memory it needs."""
    ratios = []
    for r in rows:
        if r["model"] != r["pair"] or r["status"] != "ok":
            continue
        for other in rows:
            same_point = other["pair"] == r["pair"] and other["resolution"] == r["resolution"]
            if not same_point or other is r or other["status"] != "ok":
                continue
            ratio = {"pair": r["pair"], "resolution": r["resolution"], "against": other["model"],
                     "speedup": r["images_per_s"] / other["images_per_s"]}  # fmt: skip
            if r.get("peak_bytes") and other.get("peak_bytes"):
                ratio["memory_ratio"] = r["peak_bytes"] / other["peak_bytes"]
            ratios.append(ratio)
    return ratios


def show(
    rows: list[dict[str, Any]], ratios: list[dict[str, Any]], args: argparse.Namespace
) -> None:
    table: dict[str, dict[Any, Any]] = {}
    for r in rows:
        table.setdefault(r["model"], {"model": r["model"]})[r["resolution"]] = r
    columns = [("model", lambda e: e["model"])] + [
        (f"{n} px", lambda e, n=n: f"{cell(e[n], 'images_per_s', si)} / {cell(e[n], 'peak_bytes', byte_size)}"
         if n in e else "-")
        for n in args.resolutions
    ]  # fmt: skip
    print_table(f"images/s / peak memory, batch {args.batch}", columns, list(table.values()))
    if ratios:
        columns = [
            ("Mamba model", lambda r: r["pair"]),
            ("px", lambda r: str(r["resolution"])),
            ("against", lambda r: r["against"]),
            ("x faster", lambda r: f"{r['speedup']:.2f}"),
            ("memory vs it", lambda r: f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else "-"),
        ]
        print_table("Mamba against DeiT (same run)", columns, ratios)


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device):
    fig, axes = new_figure(2, f"vision backbones, batch {args.batch}, {device.type}")
    line_panel(
        axes[0], rows, "resolution", "images_per_s", "model", "inference", "images/s", logy=True
    )
    line_panel(axes[1], rows, "resolution", "peak_bytes", "model", "peak memory", "GiB",
               logy=True, scale=2.0**-30)  # fmt: skip
    return save_figure(fig, args.out, SUITE)
