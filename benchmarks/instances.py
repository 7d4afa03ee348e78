"""Instances on the bundled nuclei sample: ours against a classical watershed and against our own
semantic heads split into connected components.

Train on the left half (512 x 256), score on the right half, against the sample's instance ground truth
(objects cut by the halving line count on both sides as the parts that fall there):

- ``dinounet instances``: heads trained on the boundary-aware 3-class target (engine/instances.py),
  decoded by the seeded watershed with its default parameters;
- ``dinounet semantic + components``: heads trained on the 2-class foreground, with the same backbone,
  patch, batch and steps, their labels split into connected components;
- ``classical``: Gaussian-smoothed Otsu threshold, then a watershed of the distance transform seeded at
  its local maxima at least ``d`` pixels apart, ``d`` chosen by F1 on the training half.

Scores (engine/instance_metrics.py): F1 at IoU 0.5, the DSB 2018 AP over IoU 0.5:0.95, panoptic
quality and object counts. Prints a table, writes benchmarks/results/instances.json and an overlay PNG
of the right half at 2x: left, the semantic heads' connected components; right, our instances (each
object tinted its own colour, outlined magenta; ground-truth outlines green, white where both agree).

    PYTHONPATH=src python benchmarks/instances.py [--backbone random:tiny] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def classical(image: np.ndarray, min_distance: int, sigma: float = 2.0) -> np.ndarray:
    """Smoothed Otsu threshold + distance-transform watershed seeded at maxima ``min_distance`` apart."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), sigma=sigma, preserve_range=True)
    foreground = smooth > threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(foreground)
    components, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground)


def components(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.label(labels > 0)[0]


def train_heads(backbone, image, target, class_names, out: Path, args, task: str) -> tuple[Path, float]:
    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.train import TrainSettings, train

    settings = TrainSettings(
        patch_size=args.patch,
        batch_size=args.batch,
        epochs=args.epochs,
        iters_per_epoch=args.steps // args.epochs,
        val_fraction=0.0,
        seed=args.seed,
    )
    samples = samples_from_arrays([image], [target], num_classes=len(class_names))
    started = time.perf_counter()
    drain(
        train(
            samples,
            out=out,
            backbone=backbone,
            settings=settings,
            validation=[],
            class_names=class_names,
            overwrite=True,
            device="cpu",
            task=task,
        )
    )
    return out, time.perf_counter() - started


def overlay(image: np.ndarray, ours: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: the image in grey, each of our objects tinted its own colour with a magenta outline, the
    ground truth's outlines green (where both outline a pixel, white)."""
    from skimage.segmentation import find_boundaries

    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    rgb = np.repeat((grey * 255)[..., None], 3, axis=2)
    palette = np.random.default_rng(1).integers(64, 256, size=(int(ours.max()) + 1, 3))
    tinted = ours > 0
    rgb[tinted] = 0.6 * rgb[tinted] + 0.4 * palette[ours[tinted]]
    ours_edge = find_boundaries(ours, mode="inner")
    truth_edge = find_boundaries(truth, mode="inner")
    rgb[ours_edge] = (255, 0, 255)
    rgb[truth_edge] = (0, 255, 0)
    rgb[ours_edge & truth_edge] = (255, 255, 255)
    rgb = rgb.astype(np.uint8)
    return np.kron(rgb, np.ones((2, 2, 1), np.uint8))  # 2x so that the seams show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="random:tiny")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each of the two heads")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "instances.json")
    args = parser.parse_args()

    import tempfile

    import torch
    from PIL import Image

    from napari_dinounet.engine.atomic import atomic_path
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.instance_metrics import evaluate_instances
    from napari_dinounet.engine.instances import INSTANCE_CLASS_NAMES, InstanceMapsOutput, boundary_classes, generate
    from napari_dinounet.engine.outputs import Labels
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    image, truth = load_nuclei()
    half = image.shape[1] // 2
    train_image, test_image = image[:, :half], image[:, half:]
    train_truth, test_truth = truth[:, :half], truth[:, half:]

    # the classical baseline: its seed distance tuned by F1 on the training half
    tuning = {d: evaluate_instances(classical(train_image, d), train_truth)["f1"] for d in range(2, 16)}
    best_distance = max(tuning, key=tuning.get)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random backbone warns that its features carry no information
        backbone = load_backbone(args.backbone, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        instance_heads, instance_seconds = train_heads(
            backbone,
            train_image,
            boundary_classes(train_truth),
            list(INSTANCE_CLASS_NAMES),
            Path(tmp) / "instances.safetensors",
            args,
            "instances",
        )
        semantic_heads, semantic_seconds = train_heads(
            backbone,
            train_image,
            (train_truth > 0).astype(np.uint8),
            ["background", "nucleus"],
            Path(tmp) / "semantic.safetensors",
            args,
            "semantic",
        )
        instance_predictor = Predictor.from_checkpoint(instance_heads, backbone)
        (maps,) = drain(instance_predictor.predict(test_image, outputs=[InstanceMapsOutput()]))
        (semantic,) = drain(Predictor.from_checkpoint(semantic_heads, backbone).predict(test_image, outputs=[Labels()]))
    ours = generate(maps)
    methods = {
        "dinounet instances": ours,
        "dinounet semantic + components": components(semantic),
        f"classical (Otsu + distance watershed, d={best_distance})": classical(test_image, best_distance),
    }
    scores = {name: evaluate_instances(labels, test_truth) for name, labels in methods.items()}

    header = f"{'method':<52} {'F1@0.5':>7} {'AP@.5:.95':>9} {'PQ':>6} {'objects':>7} {'true':>5}"
    print(f"\nnuclei sample, right half {test_image.shape}; {args.backbone}, {args.steps} steps each\n{header}")
    for name, s in scores.items():
        print(f"{name:<52} {s['f1']:7.3f} {s['ap']:9.3f} {s['pq']:6.3f} {s['pred_count']:7d} {s['gt_count']:5d}")

    RESULTS.mkdir(exist_ok=True)
    overlay_path = RESULTS / "instances_overlay.png"
    panels = [
        overlay(test_image, methods["dinounet semantic + components"], test_truth),
        overlay(test_image, ours, test_truth),
    ]
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    with atomic_path(overlay_path) as tmp:
        Image.fromarray(np.concatenate([panels[0], gap, panels[1]], axis=1)).save(tmp, format="PNG")
    write_json(
        args.out,
        {
            "benchmark": "instances",
            "data": "bundled DSB 2018 nuclei sample: train on the left half, score on the right half",
            "backbone": args.backbone,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "train_seconds": {"instances": round(instance_seconds, 1), "semantic": round(semantic_seconds, 1)},
            "classical_tuning_f1": {str(d): round(f, 4) for d, f in tuning.items()},
            "scores": scores,
            "overlay": str(overlay_path.relative_to(Path(__file__).parent.parent)),
            "machine": machine(load_start, os.getloadavg()[0]),
        },
    )
    print(f"wrote {args.out} and {overlay_path}")


if __name__ == "__main__":
    main()
