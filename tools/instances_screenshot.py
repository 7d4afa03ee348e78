"""A screenshot of Segment with instance heads in a real napari viewer: objects, their count, the features table.

Run under a display (Xvfb on a server):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/instances_screenshot.py \
        [--heads instances.safetensors] [--out docs/screenshots/instances.png]

Without ``--heads`` it first trains instance heads on the bundled nuclei sample's left half (``random:tiny``,
``--steps`` steps, patch 96: a few CPU minutes), as benchmarks/instances.py does. Then it opens the sample,
runs Segment with those heads on the whole image and saves the window (Segment's dock, napari's Features
table widget, the labels over the image). Settings and checkpoints go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.gettempdir()) / "dinounet-instances"


def train_heads(out: Path, steps: int) -> Path:
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.instances import INSTANCE_CLASS_NAMES, instance_samples
    from napari_dinounet.engine.progress import run_with_bar
    from napari_dinounet.engine.train import TrainSettings, train

    image, truth = load_nuclei()
    half = image.shape[1] // 2
    settings = TrainSettings(patch_size=96, batch_size=4, epochs=1, iters_per_epoch=steps, val_fraction=0.0)
    samples = instance_samples([image[:, :half]], [truth[:, :half]])
    run = train(
        samples,
        out=out,
        backbone="random:tiny",
        settings=settings,
        validation=[],
        class_names=list(INSTANCE_CLASS_NAMES),
        overwrite=True,
        device="cpu",
        task="instances",
    )
    return run_with_bar(run, desc="instance heads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=Path, help="instance heads for random:tiny; default: train them first")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "instances.png")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    os.environ.setdefault("NAPARI_DINOUNET_SETTINGS_DIR", str(WORK / "settings"))

    import warnings

    warnings.simplefilter("ignore")  # random:tiny says it is not pretrained; the README says so too
    heads = args.heads or train_heads(WORK / "instances.safetensors", args.steps)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinounet._sample_data import nuclei_sample
    from napari_dinounet._widgets.segment import SegmentWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    data, kwargs, _ = nuclei_sample()[0]
    viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(heads))
    job = widget.run()
    if job is None:
        sys.exit("Segment did not start (see the error above)")
    deadline = time.monotonic() + 600
    while not job.done and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if not job.done or job.errored:
        sys.exit("Segment failed or did not finish")
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.02)
    print(widget.status.text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    picture = Image.fromarray(viewer.screenshot(canvas_only=False)).convert("RGB")
    # 256 colours, as tools/screenshots.py keeps its pictures: a fifth of the size, nothing visible lost
    picture.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
