"""``dinounet demo``: train on the bundled nuclei image's left half, test on its right half, beat Otsu.

The whole job of the package in a few CPU minutes: training data in memory, a heads checkpoint, a
sliding-window prediction, Dice and HD95 against the ground truth, and the same figures for an
Otsu-threshold baseline on the same half. Uses real DINOv3 weights when given (``--backbone`` or the
``DINOUNET_BACKBONE`` environment variable), otherwise a random tiny backbone (with a warning).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from ._common import BACKBONE_ENV

HELP = "train on the bundled nuclei sample (left half), test on the right half, compare with Otsu"

RANDOM_BACKBONE = "random:tiny"
DEMO_PATCH = 64
DEMO_BATCH = 4
DEMO_EPOCHS = 4
DEMO_ITERS = 50

RANDOM_WARNING = f"""
{"!" * 100}
No DINOv3 weights configured (--backbone PATH or the {BACKBONE_ENV} environment variable): this demo
uses a RANDOMLY INITIALISED tiny backbone ({RANDOM_BACKBONE}, width 64, 4 blocks). Its features carry no
information; the heads still learn, because the adapter's spatial prior module (a small CNN on the
pixels), the projection and the U-Net decoder are trained, and bright round nuclei are easy enough for
that. The tiny size keeps the demo to a few CPU minutes. For real Dino U-Net, download DINOv3 weights
(Meta's .pth or a Hugging Face facebook/dinov3-* folder) and pass --backbone PATH.
{"!" * 100}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="dinounet_demo", metavar="DIR", help="folder for the results (default ./dinounet_demo)"
    )
    parser.add_argument(
        "--backbone",
        metavar="SOURCE",
        help=f"DINOv3 weights; default: {BACKBONE_ENV}, else {RANDOM_BACKBONE} (random, with a warning)",
    )
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"default {DEMO_EPOCHS}")
    parser.add_argument("--iters-per-epoch", type=int, default=DEMO_ITERS, help=f"default {DEMO_ITERS}")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu; default auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _overlay(image, predicted, truth):
    """RGB uint8 (H, W, 3): the image in grey, ground-truth outlines green, predicted outlines magenta."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    low, high = np.percentile(image, [0.5, 99.5])
    grey = (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[find_boundaries(truth > 0, mode="inner")] = (0, 255, 0)
    rgb[find_boundaries(predicted > 0, mode="inner")] = (255, 0, 255)
    return rgb


def _scores(predicted, truth) -> dict:
    from ..engine.metrics import evaluate_pair

    result = evaluate_pair(predicted, truth, classes=[1])
    hd95 = result["hd95"][1]
    return {"dice": result["dice"][1], "hd95": hd95 if hd95 != float("inf") else None}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from skimage.filters import threshold_otsu

    from ..engine.atomic import atomic_path, probe_folder
    from ..engine.backbone import load_backbone
    from ..engine.bundled_data import load_nuclei
    from ..engine.data import samples_from_arrays
    from ..engine.device import pick_device
    from ..engine.io import write_labels
    from ..engine.predictor import Predictor
    from ..engine.progress import run_with_bar
    from ..engine.train import TrainSettings, train

    out_dir = Path(args.out)
    probe_folder(out_dir)  # a folder that cannot be written fails now, not after the training
    source = args.backbone or os.environ.get(BACKBONE_ENV)
    device = pick_device(args.device)
    if source:
        backbone = load_backbone(source, device=device)
    else:
        print(RANDOM_WARNING, file=sys.stderr)
        source = RANDOM_BACKBONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the box above says it louder and says why
            backbone = load_backbone(source, device=device)

    image, instances = load_nuclei()
    foreground = (instances > 0).astype(np.uint8)
    half = image.shape[1] // 2
    train_image, test_image = image[:, :half], image[:, half:]
    train_truth, test_truth = foreground[:, :half], foreground[:, half:]

    settings = TrainSettings(
        patch_size=DEMO_PATCH,
        batch_size=DEMO_BATCH,
        epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch,
    )
    checkpoint = out_dir / "nuclei_heads.safetensors"
    started = time.perf_counter()
    samples = samples_from_arrays([train_image], [train_truth], num_classes=2)
    run_with_bar(
        train(
            samples,
            out=checkpoint,
            backbone=backbone,
            settings=settings,
            class_names=["background", "nucleus"],
            overwrite=True,
            device=device,
        ),
        desc="demo",
        disable=args.quiet,
    )
    train_seconds = time.perf_counter() - started
    predictor = Predictor.from_checkpoint(checkpoint, backbone, device=device)
    (predicted,) = run_with_bar(predictor.predict(test_image, tile=DEMO_PATCH), desc="demo", disable=args.quiet)
    otsu = (test_image > threshold_otsu(test_image)).astype(np.uint8)

    labels_path = write_labels(out_dir / "nuclei_test_labels.tif", predicted)
    overlay_path = out_dir / "nuclei_test_overlay.png"
    with atomic_path(overlay_path) as tmp:
        Image.fromarray(_overlay(test_image, predicted, test_truth)).save(tmp, format="PNG")
    history = predictor.metadata.training.get("history", [])
    results = {
        "backbone": source,
        "pretrained": backbone.pretrained,
        "train": {
            "settings": settings.to_dict(),
            "seconds": round(train_seconds, 1),
            "device": str(device),
            "validation_dice": [h["val_dice"] for h in history],
        },
        "test_half": {"dinounet": _scores(predicted, test_truth), "otsu": _scores(otsu, test_truth)},
        "files": {"checkpoint": str(checkpoint), "labels": str(labels_path), "overlay": str(overlay_path)},
    }
    results_path = out_dir / "demo_results.json"
    with atomic_path(results_path) as tmp:
        tmp.write_text(json.dumps(results, indent=2))

    print(
        f"\nnuclei sample, right half ({test_image.shape[0]}x{test_image.shape[1]}); trained on the left half "
        f"in {train_seconds:.0f} s on {device}"
    )
    print(f"{'method':<34} {'Dice':>6} {'HD95 (px)':>10}")
    for name, key in ((f"Dino U-Net ({source})", "dinounet"), ("Otsu threshold", "otsu")):
        score = results["test_half"][key]
        hd95 = "inf" if score["hd95"] is None else f"{score['hd95']:.2f}"
        print(f"{name[:34]:<34} {score['dice']:>6.3f} {hd95:>10}")
    print(f"wrote {labels_path}, {overlay_path}, {results_path}, {checkpoint}")
    return 0
