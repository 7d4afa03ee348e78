"""A 3D screenshot for the README: the whole MNI152 brain sample segmented on three planes, in napari's 3D view.

Run under a display (Xvfb on a server):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/volume_screenshot.py [--out docs/screenshots]

It opens the "MNI152 whole brain (2 mm)" sample, keeps its ground truth on the lower 48 axial slices only
(the rest unlabelled), fine-tunes fresh heads on those slices (Fine-tune, Stack "slices with labels"),
segments the whole volume with Segment's "whole volume (3 planes)" and saves ``volume_3d.png`` with
``viewer.dims.ndisplay = 3``: the fused white-matter labels as a surface inside the T1 (attenuated MIP).
Backbone ``random:tiny``: what the widgets do, not what DINOv3 features achieve.
Settings and checkpoints go to ``$TMPDIR/dinounet-demo`` (the helpers of ``tools/screenshots.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from screenshots import DOCK_WIDTH, ROOT, WORK, dock, fresh_finetune, settle, start_viewer, wait_for  # sibling tool

LABELLED_SLICES_UP_TO = 48  # z slices 0..47 carry the ground truth, the upper ones are left unlabelled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        sys.exit("no display: run under Xvfb, e.g. xvfb-run -a .venv/bin/python tools/volume_screenshot.py")
    args.out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "brain-heads.safetensors").unlink(missing_ok=True)
    (WORK / "brain-heads.state.safetensors").unlink(missing_ok=True)
    viewer = start_viewer(WORK)
    from PIL import Image

    from napari_dinounet._widgets._volumes import LABELLED_SLICES, WHOLE_VOLUME

    viewer.open_sample("napari-dinounet", "mni152_volume")
    image, truth = viewer.layers["MNI152 brain 2 mm"], viewer.layers["MNI152 brain 2 mm ground truth"]
    partial = np.array(truth.data)
    partial[LABELLED_SLICES_UP_TO:] = 0
    drawn = viewer.add_labels(partial, name="labelled slices", scale=truth.scale, metadata=dict(truth.metadata))
    docks: dict = {}

    finetune = fresh_finetune(viewer, docks, image, drawn)
    finetune.stack_combo.setCurrentText(LABELLED_SLICES)
    finetune.steps_spin.setValue(args.steps)
    finetune.every_spin.setValue(args.steps)
    finetune.patch_spin.setValue(64)
    finetune.batch_spin.setValue(4)
    finetune.lr_spin.setValue(0.003)
    finetune.out_edit.setText(str(WORK / "brain-heads.safetensors"))
    wait_for(finetune.start(), "Fine-tuning", timeout_s=1200)

    segment = dock(viewer, docks, "Segment")
    segment.image_combo.set_layer(image)
    segment.tile_spin.setValue(96)
    segment.stack_combo.setCurrentText(WHOLE_VOLUME)
    wait_for(segment.run(), "Segmentation", timeout_s=1200)
    predicted = viewer.layers["MNI152 brain 2 mm labels"]
    upper = slice(LABELLED_SLICES_UP_TO, None)
    for value, name in enumerate(truth.metadata["class_names"][1:], start=1):
        found, wanted = predicted.data[upper] == value, truth.data[upper] == value
        print(f"Dice {name} on the unlabelled slices: {2 * (found & wanted).sum() / (found.sum() + wanted.sum()):.3f}")

    truth.visible = drawn.visible = False
    viewer.dims.ndisplay = 3
    image.rendering, image.opacity = "attenuated_mip", 0.35  # the brain as context around the labels
    predicted.show_selected_label, predicted.selected_label = True, 2  # the fused white matter, in 3D
    viewer.layers.selection.active = predicted
    from qtpy.QtCore import Qt

    viewer.window._qt_window.resizeDocks([docks["Segment"][0]], [DOCK_WIDTH], Qt.Horizontal)
    viewer.reset_view()
    from napari_dinounet._widgets._layer_geometry import camera

    camera(viewer).angles = (75.0, -25.0, -100.0)  # from the left, a little from above and behind
    settle(1.0)
    path = args.out / "volume_3d.png"
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(pixels).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
