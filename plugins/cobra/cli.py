"""``mambaverse caption --checkpoint DIR IMAGE...``: one caption per image, from a trained VLM.

Prints ``IMAGE<TAB>CAPTION`` lines in the order given (``--json``: JSON lines). Images that are
missing or unreadable are reported on stderr and skipped; the others are still captioned, and the
exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from mambaverse.cli import Command, parse_device
from mambaverse.errors import ConfigError, MambaverseError

from .templates import CAPTION_PROMPT


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="a vlm checkpoint directory"
    )
    parser.add_argument("--prompt", default=CAPTION_PROMPT, help=f"default: {CAPTION_PROMPT!r}")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help='print {"image", "caption"} lines')


def _run(args: argparse.Namespace) -> int:
    from mambaverse.pretrained import load_pretrained

    from .images import load_image

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--max-new-tokens and --batch-size must be at least 1")
    device = parse_device(args.device)  # before the model is loaded
    model = load_pretrained(args.checkpoint)
    if not hasattr(model, "generate") or not hasattr(model, "towers"):
        backbone = getattr(model, "mambaverse_config", {}).get("backbone", type(model).__name__)
        raise ConfigError(
            f"{args.checkpoint}: holds a {backbone} model, not a vision-language model"
        )
    model.to(device).eval()

    readable, failed = [], 0
    for path in args.images:
        try:
            readable.append((path, load_image(path)))
        except MambaverseError as err:
            print(f"mambaverse caption: {err}", file=sys.stderr)
            failed += 1
    for start in range(0, len(readable), args.batch_size):
        chunk = readable[start : start + args.batch_size]
        captions = model.generate(
            [image for _, image in chunk], args.prompt, max_new_tokens=args.max_new_tokens
        )
        for (path, _), caption in zip(chunk, captions):
            line = (
                json.dumps({"image": path, "caption": caption})
                if args.json
                else f"{path}\t{caption}"
            )
            print(line, flush=True)
    return 1 if failed else 0


caption_command = Command(_configure, _run)
