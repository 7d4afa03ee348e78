"""Tri-planar against slice-wise prediction on the bundled MNI152 brain (2 mm, GM / WM / other brain).

The volume is cut into two slabs along z (axial slices): heads are trained on the lower slab, with 2D
slices from all three planes (engine/volume.py), and tested on the upper slab, which they never saw.
The test slab is predicted slice by slice along each single axis (axial, coronal, sagittal) and with
the three planes fused (mean of the class probabilities). Reported per mode: 3D Dice per class, HD95 in
mm (2 mm voxels), the mean Dice, the wall and CPU time (the machine is shared: CPU time is the steadier
figure), and peak memory: the NumPy allocations traced during the prediction (tracemalloc: images, the
running probability sum, labels; torch's own buffers are not traced) beside what holding every plane's
probabilities at full size would take, and the process's peak RSS at the end. A second pair of heads,
trained on axial slices only (what a 2D pipeline does today), is scored along the axial axis as the baseline.

No pretrained DINOv3 weights here: a random backbone (``--backbone random:tiny`` by default), so the
absolute Dice values reflect the trainable heads on this CPU budget, not Dino U-Net with DINOv3; the
comparison between modes uses one model and is side by side in one run.

Usage: python benchmarks/volumes.py [--steps 300] [--backbone random:tiny] [--out benchmarks/results/volumes.json]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from _common import machine, peak_rss_mib, write_json

from napari_dinounet.engine import volume
from napari_dinounet.engine.bundled_data import load_mni152_volume
from napari_dinounet.engine.metrics import evaluate_pair
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.train import TrainSettings, train

RESULTS = Path(__file__).resolve().parent / "results" / "volumes.json"
MODES = {"axial": (0,), "coronal": (1,), "sagittal": (2,), "tri-planar": (0, 1, 2)}


def slabs(image: np.ndarray, labels: np.ndarray, train_fraction: float):
    """(train image, train labels), (test image, test labels): the lower and upper slabs along z."""
    cut = round(image.shape[0] * train_fraction)
    return (image[:cut], labels[:cut]), (image[cut:], labels[cut:])


def train_heads(image, labels, spacing, planes, class_names, args, out: Path) -> tuple[Path, float, int]:
    """Heads trained on ``planes`` of the training slab: (path, seconds, training slices)."""
    samples = volume.volume_samples(image, labels, spacing=spacing, planes=planes, num_classes=len(class_names))
    settings = TrainSettings(
        patch_size=args.patch,
        batch_size=args.batch,
        epochs=1,
        iters_per_epoch=args.steps,
        lr=args.lr,
        val_crops=4,
        seed=args.seed,
    )
    start = time.perf_counter()
    drain(
        train(
            samples,
            out=out,
            backbone=args.backbone,
            settings=settings,
            validation=[],
            class_names=class_names,
            device="cpu",
            spacing=spacing,
            planes=planes,
        )
    )
    return out, time.perf_counter() - start, len(samples)


def score(predictor: Predictor, image, labels, spacing, planes, classes) -> dict:
    tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        predicted = drain(volume.predict_planes(predictor, image, spacing=spacing, planes=planes, step=0.5))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = evaluate_pair(predicted, labels, spacing=spacing, classes=classes)
    return {
        "planes": list(planes),
        "dice": {str(c): result["dice"][c] for c in classes},
        "hd95_mm": {str(c): result["hd95"][c] for c in classes},
        "mean_dice": float(np.mean([result["dice"][c] for c in classes])),
        "mean_hd95_mm": float(np.mean([result["hd95"][c] for c in classes])),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "traced_numpy_peak_mib": traced / 2**20,
        # what holding each plane's probabilities at full size would take, against the one running sum
        "probabilities_per_plane_mib": len(planes) * predictor.metadata.num_classes * labels.size * 4 / 2**20,
    }


def table(rows: dict, names: list[str]) -> str:
    header = ["mode"] + [f"Dice {n}" for n in names] + ["mean Dice"] + [f"HD95 {n} (mm)" for n in names]
    header += ["s (wall)", "s (CPU)", "NumPy peak MiB", "planes x probabilities MiB"]
    lines = [header]
    for mode, row in rows.items():
        lines.append(
            [mode]
            + [f"{v:.4f}" for v in row["dice"].values()]
            + [f"{row['mean_dice']:.4f}"]
            + [f"{v:.2f}" if math.isfinite(v) else "inf" for v in row["hd95_mm"].values()]
            + [f"{row['seconds']:.1f}", f"{row['cpu_seconds']:.1f}", f"{row['traced_numpy_peak_mib']:.1f}"]
            + [f"{row['probabilities_per_plane_mib']:.1f}"]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="random:tiny")
    parser.add_argument("--steps", type=int, default=300, help="training steps per pair of heads")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-fraction", type=float, default=0.6, help="share of the z slices that train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()[0]

    sample = load_mni152_volume()
    names = list(sample.class_names[1:])
    classes = list(range(1, len(sample.class_names)))
    (train_image, train_labels), (test_image, test_labels) = slabs(sample.image, sample.labels, args.train_fraction)
    print(
        f"volume {sample.image.shape} at {sample.spacing} mm: train slab {train_image.shape}, test {test_image.shape}"
    )

    rows, training = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for heads_name, planes in (("tri-planar heads", (0, 1, 2)), ("axial heads", (0,))):
            path, seconds, count = train_heads(
                train_image,
                train_labels,
                sample.spacing,
                planes,
                list(sample.class_names),
                args,
                Path(folder) / f"{heads_name.split()[0]}.safetensors",
            )
            training[heads_name] = {"planes": list(planes), "slices": count, "seconds": seconds}
            print(f"{heads_name}: {count} training slices, {args.steps} steps, {seconds:.0f} s")
            predictor = Predictor.from_checkpoint(path, args.backbone, device="cpu")
            modes = MODES if planes == (0, 1, 2) else {"axial": (0,)}
            for mode, mode_planes in modes.items():
                key = f"{mode} ({heads_name})"
                rows[key] = score(predictor, test_image, test_labels, sample.spacing, mode_planes, classes)
                print(f"  {key}: mean Dice {rows[key]['mean_dice']:.4f}, {rows[key]['seconds']:.1f} s")

    print(table(rows, names))
    single = {k: v["mean_dice"] for k, v in rows.items() if "tri-planar (" not in k}
    best_single = max(single, key=single.get)
    fused = rows["tri-planar (tri-planar heads)"]["mean_dice"]
    verdict = "beats" if fused > single[best_single] else "does NOT beat"
    print(f"tri-planar fusion {fused:.4f} {verdict} the best single axis, {best_single} {single[best_single]:.4f}")
    write_json(
        args.out,
        {
            "benchmark": "volumes",
            "volume": {"shape": list(sample.image.shape), "spacing_mm": list(sample.spacing), "classes": names},
            "train_slab": list(train_image.shape),
            "test_slab": list(test_image.shape),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},  # where it went is no setting
            "training": training,
            "modes": rows,
            "best_single_axis": best_single,
            "tri_planar_beats_best_single_axis": fused > single[best_single],
            "peak_rss_mib": peak_rss_mib(),
            "machine": machine(load_start, os.getloadavg()[0]),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
