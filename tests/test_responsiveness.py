"""The GUI stays responsive while Segment and Fine-tune run (real viewer; run under ``xvfb-run -a``).

A 10 ms QTimer ticks in the GUI thread during a run; the longest gap between two ticks is how long the
GUI was frozen at worst. Segmentation and training run in worker threads, so the gap must stay under
200 ms on the CPU (what a user notices as a stutter). The measured gaps are printed (``pytest -s``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from _widget_helpers import isolated_settings, wait_for, write_tiny_heads  # noqa: F401
from qtpy.QtCore import QTimer

MAX_GAP_S = 0.2


class TickRecorder:
    """Records when a 10 ms QTimer fires in the GUI thread."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> TickRecorder:
        self.timer.start()
        return self

    def __exit__(self, *_) -> None:
        self.timer.stop()

    @property
    def longest_gap(self) -> float:
        return float(np.diff(self.ticks).max())


@pytest.fixture
def viewer(make_napari_viewer):
    from napari_dinounet.engine.samples import load_nuclei

    viewer = make_napari_viewer()
    image, instances = load_nuclei()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels((instances > 0).astype(np.uint8), name="corrected",
                      metadata={"class_names": ["background", "nucleus"]})
    return viewer


def test_gui_responsive_while_segmenting(qtbot, viewer, tmp_path):
    from napari_dinounet._widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(write_tiny_heads(tmp_path / "heads.safetensors", patch_size=128)))
    widget.tta_check.setChecked(True)  # 4x the work: a run of a few seconds
    started = time.perf_counter()
    with TickRecorder() as recorder:
        job = widget.run()
        wait_for(qtbot, job)
    took = time.perf_counter() - started
    assert not job.errored and viewer.layers["nuclei labels"].data.shape == (512, 512)
    print(f"segment: {took:.2f} s, {len(recorder.ticks)} ticks, longest GUI gap {recorder.longest_gap * 1000:.0f} ms")
    assert took > 0.5, "the run was too short to show anything"
    assert recorder.longest_gap < MAX_GAP_S


def test_gui_responsive_while_fine_tuning(qtbot, viewer, tmp_path):
    from napari_dinounet._widgets.finetune import FRESH_HEADS, FineTuneWidget

    widget = FineTuneWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.start_combo.setCurrentText(FRESH_HEADS)
    widget.rows[0].labels.set_layer(viewer.layers["corrected"])
    widget.steps_spin.setValue(30)
    widget.every_spin.setValue(10)
    widget.patch_spin.setValue(128)
    widget.cache_check.setChecked(False)
    widget.out_edit.setText(str(tmp_path / "tuned.safetensors"))
    started = time.perf_counter()
    with TickRecorder() as recorder:
        job = widget.start()
        wait_for(qtbot, job)
    took = time.perf_counter() - started
    assert not job.errored and (tmp_path / "tuned.safetensors").is_file()
    print(f"fine-tune: {took:.2f} s, {len(recorder.ticks)} ticks, longest GUI gap {recorder.longest_gap * 1000:.0f} ms")
    assert took > 0.5, "the run was too short to show anything"
    assert recorder.longest_gap < MAX_GAP_S
