"""``dinounet summary``: trainable parameters of a Dino U-Net per module, counted without allocating it."""

from __future__ import annotations

import argparse
import json
import warnings

from ..engine.names import BACKBONE_SIZES, PROJECTIONS

HELP = "count the trainable parameters of a Dino U-Net per module (meta device: even 7b needs no memory)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=BACKBONE_SIZES, default="s", help="backbone size (default: s)")
    parser.add_argument(
        "--projection", choices=PROJECTIONS, default="fapm",
        help="fapm (default), compact (the paper's Table IV counts) or plain (the paper's ablation)",
    )  # fmt: skip
    parser.add_argument("--classes", type=int, default=2, help="number of classes incl. background (default: 2)")
    parser.add_argument(
        "--backbone", metavar="SOURCE",
        help="count for this backbone's own size instead of --size (weights file or folder; only shapes are read)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def summarize(size: str = "s", projection: str = "fapm", num_classes: int = 2, backbone: str | None = None) -> dict:
    """Parameter counts of the network, built on the meta device. Keys: size, projection, num_classes,
    embed_dim, taps, modules (trainable parameters per module), trainable_params, backbone_params."""
    from ..engine.backbone import load_backbone
    from ..engine.network import build_dinounet

    if backbone is None:
        # a meta backbone has no weights at all, so its "random weights" warning does not apply here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RANDOM weights")
            loaded = load_backbone(f"random:{size}", device="meta")
    else:
        loaded = load_backbone(backbone, device="meta")
    model = build_dinounet(projection=projection, num_classes=num_classes, backbone=loaded)
    counts = model.trainable_params()
    total = counts.pop("total")
    return {
        "size": model.config.size,
        "projection": projection,
        "num_classes": num_classes,
        "embed_dim": model.config.embed_dim,
        "taps": list(model.config.taps),
        "modules": counts,
        "trainable_params": total,
        "backbone_params": loaded.num_params,
    }


def run(args: argparse.Namespace) -> int:
    facts = summarize(args.size, args.projection, args.classes, args.backbone)
    if args.json:
        print(json.dumps(facts))
        return 0
    taps = ", ".join(str(t) for t in facts["taps"])
    print(
        f"Dino U-Net {facts['size']}, projection {facts['projection']}, {facts['num_classes']} classes "
        f"(D={facts['embed_dim']}, taps {taps})"
    )
    rows = [*facts["modules"].items(), ("total trainable", facts["trainable_params"]),
            ("backbone (frozen)", facts["backbone_params"])]  # fmt: skip
    for name, count in rows:
        print(f"{name:<18} {count:>14,}")
    return 0
