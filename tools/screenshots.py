"""Screenshots of the Segment, Fine-tune and Export widgets in a real napari viewer, for the README.

Run under a display (Xvfb on a server):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/screenshots.py [--out docs/screenshots]

It walks through the README's workflow on the bundled nuclei sample: Fine-tune fresh heads on the
ground-truth labels (a short run, so the loss plot has a curve), Segment the image with them, and
Export the result; after each step it docks that step's widget alone and saves
``{finetune,segment,export}.png`` with ``viewer.screenshot(canvas_only=False)``. The backbone is
``random:tiny`` (an untrained toy: no weights to download, seconds on a CPU), so the segmentation shows
what the widgets do, not what DINOv3 features achieve. Checkpoints, exports and napari's and the
plugin's settings go to ``$TMPDIR/dinounet-demo``: the user's settings and home are left alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1600, 1000)
DOCK_WIDTH = 480  # narrower docks leave the canvas more room (Qt keeps each widget's minimum width)
WORK = Path(tempfile.gettempdir()) / "dinounet-demo"  # short, readable paths in the pictures


def wait_for(job, what: str, timeout_s: float) -> None:
    """Process Qt events until ``job`` (a widget's background Job) ends; exit on failure or timeout."""
    from qtpy.QtWidgets import QApplication

    if job is None:
        sys.exit(f"{what} did not start (see the error above)")
    deadline = time.monotonic() + timeout_s
    while not job.done:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not finish within {timeout_s:.0f} s")
    if job.errored or job.cancelled:
        sys.exit(f"{what} failed (see the notification text above)")


def settle(seconds: float = 0.5) -> None:
    """Let Qt lay out and paint for a moment before a screenshot."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def dock(viewer, docks: dict, name: str):
    """Dock the plugin widget ``name`` (creating it once), hide the other docks; return the widget."""
    from qtpy.QtCore import Qt

    if name not in docks:
        docks[name] = viewer.window.add_plugin_dock_widget("napari-dinounet", name)
    for other, (dock_widget, _) in docks.items():
        dock_widget.setVisible(other == name)
    settle(0.2)  # resizing works once the dock is laid out
    viewer.window._qt_window.resizeDocks([docks[name][0]], [DOCK_WIDTH], Qt.Horizontal)
    return docks[name][1]


def shoot(viewer, path: Path) -> None:
    """Save the whole window, without the pop-up notifications (their text is in the widgets' status lines)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    viewer.reset_view()  # fit the image to the canvas the dock left
    settle()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    # 256 colours: a fifth of the file size, and no visible change in these flat interface pictures
    picture = Image.fromarray(pixels).convert("RGB")
    picture.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def start_viewer(work: Path):
    """A napari viewer of the window size, with napari's and the plugin's settings in ``work`` (the user's are
    neither read nor changed) and torch imported first (torch after a QApplication can crash on some
    platforms)."""
    os.environ["NAPARI_CONFIG"] = str(work / "napari-settings.yaml")
    os.environ["NAPARI_DINOUNET_SETTINGS_DIR"] = str(work)
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import napari

    viewer = napari.Viewer(title="napari-dinounet")
    viewer.window.resize(*WINDOW)
    return viewer


def fresh_finetune(viewer, docks: dict, image, labels):
    """The Fine-tune dock, set to train fresh heads on ``random:tiny`` from the ``image`` and ``labels`` layers."""
    from napari_dinounet._widgets.finetune import FRESH_HEADS

    finetune = dock(viewer, docks, "Fine-tune")
    finetune.model_form.backbone_edit.setText("random:tiny")
    finetune.start_combo.setCurrentText(FRESH_HEADS)
    finetune.rows[0].image.set_layer(image)
    finetune.rows[0].labels.set_layer(labels)
    return finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps (the loss plot's length)")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        sys.exit("no display: run under Xvfb, e.g. xvfb-run -a .venv/bin/python tools/screenshots.py")
    args.out.mkdir(parents=True, exist_ok=True)
    work = WORK
    (work / "shared").mkdir(parents=True, exist_ok=True)
    for name in ("nuclei_labels.tif", "napari-settings.yaml", "napari-dinounet.ini"):
        (work / name).unlink(missing_ok=True)  # earlier runs' files
    for old in work.glob("*nuclei-heads*"):  # the checkpoint and its resume state: Fine-tune never overwrites them
        old.unlink()
    viewer = start_viewer(work)
    viewer.open_sample("napari-dinounet", "nuclei")
    image, truth = viewer.layers["nuclei"], viewer.layers["nuclei ground truth"]
    docks: dict = {}

    finetune = fresh_finetune(viewer, docks, image, truth)
    finetune.steps_spin.setValue(args.steps)
    finetune.every_spin.setValue(max(1, args.steps // 3))
    finetune.patch_spin.setValue(128)
    finetune.batch_spin.setValue(2)
    finetune.out_edit.setText(str(work / "nuclei-heads.safetensors"))
    wait_for(finetune.start(), "Fine-tuning", timeout_s=600)
    viewer.layers.selection.active = truth
    shoot(viewer, args.out / "finetune.png")

    segment = dock(viewer, docks, "Segment")
    segment.image_combo.set_layer(image)
    wait_for(segment.run(), "Segmentation", timeout_s=300)
    truth.visible = False
    predicted = viewer.layers["nuclei labels"]
    found, wanted = predicted.data > 0, truth.data > 0
    dice = 2 * (found & wanted).sum() / (found.sum() + wanted.sum())
    print(f"Dice of 'nuclei labels' vs the ground truth: {dice:.3f} (the image the heads were trained on)")
    viewer.layers.selection.active = predicted
    shoot(viewer, args.out / "segment.png")

    export = dock(viewer, docks, "Export")
    export.layer_combo.set_layer(predicted)
    export.labels_path_edit.setText(str(work / "nuclei_labels.tif"))
    export.heads_path_edit.setText(str(work / "shared" / "nuclei-heads.safetensors"))
    if export.export_labels() is None:
        sys.exit("Export failed (see the message above)")
    shoot(viewer, args.out / "export.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
