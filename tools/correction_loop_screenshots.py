"""Screenshots of the correction loop in a real napari viewer, for the README: scribbles, the live preview,
uncertainty.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/correction_loop_screenshots.py [--out DIR]

On the bundled nuclei sample, strokes like a user's (``engine.sparse.simulated_scribbles``: 3 % of the
pixels, nuclei 1, background 2) train fresh heads in Fine-tune with *sparse labels (scribbles)*, validated
on the sample's ground truth, while the live preview follows a zoomed-in view
(``finetune-scribbles.png``, taken mid-training); then Segment adds the uncertainty layer
(``segment-uncertainty.png``). The backbone is ``random:tiny`` (untrained: the pictures show what the
widgets do, not what DINOv3 features achieve). Files and settings go to ``$TMPDIR/dinounet-demo/correction-loop``
(the user's settings and home are left alone).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from screenshots import ROOT, WINDOW, dock, settle, wait_for
from screenshots import WORK as DEMO

WORK = DEMO / "correction-loop"  # its own settings: no heads remembered from other runs


def save(viewer, path: Path) -> None:
    """The whole window as it is (no reset of the view), without pop-up notifications."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    settle()
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).convert("RGB").quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    ).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        sys.exit("no display: run under Xvfb")
    args.out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    for old in [*WORK.glob("*scribble-heads*"), WORK / "napari-dinounet.ini", WORK / "napari-settings.yaml"]:
        old.unlink(missing_ok=True)  # an earlier run's heads and remembered fields
    os.environ["NAPARI_CONFIG"] = str(WORK / "napari-settings.yaml")
    os.environ["NAPARI_DINOUNET_SETTINGS_DIR"] = str(WORK)

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinounet._widgets._layer_geometry import camera
    from napari_dinounet._widgets.finetune import FRESH_HEADS
    from napari_dinounet.engine.sparse import simulated_scribbles

    viewer = napari.Viewer(title="napari-dinounet")
    viewer.window.resize(*WINDOW)
    viewer.open_sample("napari-dinounet", "nuclei")
    image, truth = viewer.layers["nuclei"], viewer.layers["nuclei ground truth"]
    truth.visible = False
    strokes = simulated_scribbles(np.asarray(truth.data), background=2, coverage=0.03).astype(np.uint8)
    scribbles = viewer.add_labels(strokes, name="strokes")
    print(f"strokes cover {100 * (strokes > 0).mean():.1f} % of the pixels")
    docks: dict = {}

    finetune = dock(viewer, docks, "Fine-tune")
    finetune.model_form.backbone_edit.setText("random:tiny")
    finetune.start_combo.setCurrentText(FRESH_HEADS)
    finetune.rows[0].image.set_layer(image)
    finetune.rows[0].labels.set_layer(scribbles)
    finetune.sparse_check.setChecked(True)
    finetune.background_spin.setValue(2)
    finetune.preview_check.setChecked(True)
    finetune.steps_spin.setValue(args.steps)
    finetune.every_spin.setValue(max(1, args.steps // 3))
    finetune.patch_spin.setValue(128)
    finetune.batch_spin.setValue(2)
    finetune.out_edit.setText(str(WORK / "scribble-heads.safetensors"))
    settle(0.3)
    view = camera(viewer)
    view.center, view.zoom = (150, 330), view.zoom * 2.2  # the user looks closer
    job = finetune.start()
    deadline = time.monotonic() + 900

    def previewed_step() -> int:  # the step of the latest preview shown (0: none yet)
        return (
            viewer.layers["nuclei preview"].metadata.get("preview_step", 0) if "nuclei preview" in viewer.layers else 0
        )

    while not job.done and previewed_step() < args.steps // 2:  # half-way: the preview has taken shape
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            sys.exit("no preview half-way within 15 minutes")
    viewer.layers.selection.active = viewer.layers["nuclei preview"]
    save(viewer, args.out / "finetune-scribbles.png")
    wait_for(job, "Fine-tuning", timeout_s=900)

    segment = dock(viewer, docks, "Segment")
    segment.image_combo.set_layer(image)
    segment.tile_spin.setValue(0)  # auto: the heads' training patch
    segment.uncertainty_check.setChecked(True)
    wait_for(segment.run(), "Segmentation", timeout_s=600)
    for layer in (scribbles, viewer.layers["nuclei preview"]):
        layer.visible = False
    found, wanted = viewer.layers["nuclei labels"].data == 1, np.asarray(truth.data) == 1
    dice = 2 * (found & wanted).sum() / (found.sum() + wanted.sum())
    print(f"Dice of the scribble-trained heads vs the ground truth: {dice:.3f}")
    viewer.layers["nuclei labels"].contour = 2  # outlines: the uncertainty under them stays readable
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers["nuclei uncertainty"]
    save(viewer, args.out / "segment-uncertainty.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
