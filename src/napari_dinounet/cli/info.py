"""``dinounet info SOURCE``: what a DINOv3 backbone weights file or folder is, without running it."""

from __future__ import annotations

import argparse
import json

HELP = "describe DINOv3 backbone weights: format, variant, width, depth, heads, parameters, sha256"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="Meta .pth, Hugging Face folder (config.json + model.safetensors), timm .safetensors/.pth, "
        "or random:<variant> (s, s+, b, l, h+, 7b, tiny)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def describe(source: str) -> dict:
    """The facts ``info`` prints; the backbone is built on the meta device, so even 7B needs no memory."""
    from ..engine.backbone import load_backbone

    backbone = load_backbone(source, device="meta")
    return {
        "format": backbone.format,
        "variant": backbone.variant,
        "embed_dim": backbone.embed_dim,
        "depth": backbone.depth,
        "num_heads": backbone.num_heads,
        "params": backbone.num_params,
        "sha256": backbone.sha256,
    }


def run(args: argparse.Namespace) -> int:
    facts = describe(args.source)
    if args.json:
        print(json.dumps(facts))
    else:
        print(f"{'source':<10} {args.source}")
        for key, value in facts.items():
            shown = f"{value:,}" if key == "params" else ("none (random weights)" if value is None else value)
            print(f"{key:<10} {shown}")
    return 0
