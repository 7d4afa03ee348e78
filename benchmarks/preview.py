"""How much the live preview slows training: the same fine-tuning run with previews on and off, side by side.

Fine-tune's defaults on a CPU (patch 128, batch 2, cached features) on the bundled nuclei image, fresh heads,
random:tiny backbone (no DINOv3 weights here); the preview predicts a 256 x 256 view (a zoomed-in viewer)
with the default schedule (engine.preview: at most 20 % of the training time, every 2 s at most). Runs
alternate on/off so that a change in the machine's load hits both; the slowdown is given in wall time and
in CPU time (one torch thread: the work done, which other programs on a shared machine change far less).
Prints a table and writes benchmarks/results/preview.json.

    PYTHONPATH=src python benchmarks/preview.py [--steps 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, write_json

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.bundled_data import load_nuclei
from napari_dinounet.engine.data import samples_from_arrays
from napari_dinounet.engine.preview import (
    PREVIEW_INTERVAL_S,
    PREVIEW_SHARE,
    Preview,
    PreviewTarget,
    PreviewView,
    with_previews,
)
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.train import TrainSettings, build_model, train

REGION = ((128, 384), (128, 384))


def one_run(backbone, image, labels, steps: int, previews: bool, folder: Path) -> dict:
    samples = samples_from_arrays([image], [labels], names=["nuclei"], num_classes=2)
    settings = TrainSettings(patch_size=128, batch_size=2, epochs=1, iters_per_epoch=steps, cache_features=True)
    model = build_model(backbone, settings, 2, in_channels=1)
    out = folder / f"run-{time.perf_counter_ns()}.safetensors"
    run = train(samples, out=out, backbone=backbone, settings=settings, model=model, validation=[])
    if previews:
        run = with_previews(
            run, model, PreviewTarget(PreviewView(image, REGION)), normalization="zscore", patch_size=128
        )
    shown: list[Preview] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    drain(run, lambda event: shown.append(event) if isinstance(event, Preview) else None)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "previews": len(shown),
        "preview_seconds": sum(p.seconds for p in shown),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the widget's worker on a 2-core machine (one core left to the GUI)
    load_start = os.getloadavg()[0]
    backbone = load_backbone("random:tiny")
    image, instances = load_nuclei()
    labels = (instances > 0).astype(np.uint8)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        one_run(backbone, image, labels, 4, True, Path(folder))  # warm-up: first-call costs hit neither side
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                runs[mode].append(one_run(backbone, image, labels, args.steps, mode == "on", Path(folder)))

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    slowdown = {key: median("on", key) / median("off", key) - 1 for key in ("seconds", "cpu_seconds")}
    print(f"{'preview':8} {'wall s':>8} {'CPU s':>8} {'previews':>9} {'preview s':>10}  (medians)")
    for mode in ("off", "on"):
        print(
            f"{mode:8} {median(mode, 'seconds'):8.2f} {median(mode, 'cpu_seconds'):8.2f} "
            f"{median(mode, 'previews'):9.0f} {median(mode, 'preview_seconds'):10.2f}"
        )
    print(
        f"training slowdown with the preview on: {100 * slowdown['cpu_seconds']:+.1f} % CPU time, "
        f"{100 * slowdown['seconds']:+.1f} % wall time (budget {100 * PREVIEW_SHARE:.0f} %)"
    )
    write_json(
        Path(__file__).parent / "results" / "preview.json",
        {
            "what": "fine-tuning wall time with the live preview on vs off (engine.preview.with_previews)",
            "steps": args.steps,
            "patch_size": 128,
            "batch_size": 2,
            "cache_features": True,
            "backbone": "random:tiny",
            "preview_region": REGION,
            "preview_share": PREVIEW_SHARE,
            "preview_interval_s": PREVIEW_INTERVAL_S,
            "runs": runs,
            "slowdown_wall": slowdown["seconds"],
            "slowdown_cpu": slowdown["cpu_seconds"],
            "machine": machine(load_start, os.getloadavg()[0], command=" ".join(sys.argv)),
        },
    )


if __name__ == "__main__":
    main()
