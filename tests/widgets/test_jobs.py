"""The job machinery every widget uses (``_widgets._jobs.Job``), in a real viewer (run under ``xvfb-run -a``).

A Qt-free generator, paced by the test through a semaphore, runs in Job's worker while the test reads what
napari's activity dock and the widget's status label show; one real Segment run is cancelled from the dock.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _widget_helpers import collect_errors, wait_for, write_tiny_heads
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_dinounet._widgets import _jobs
from napari_dinounet._widgets._jobs import Job, Stop, duration_text, report_error, status_text
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.progress import Progress, Validation

STEPS = 20
PACERS: list[Paced] = []  # released at each test's end, so that no worker outlives its test


def dock_bar(viewer, job):
    """The activity dock's bar (napari's QtLabeledProgressBar) that shows ``job``."""
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    bars = [
        bar
        for bar in viewer.window._qt_window._activity_dialog.findChildren(QtLabeledProgressBar)
        if bar.progress is job._bar
    ]
    assert len(bars) == 1, "the job's bar is not in the activity dock"
    return bars[0]


class Paced:
    """A training-like generator whose steps the test releases one at a time (never touches Qt)."""

    def __init__(self, stop: Stop | None = None, eta: bool = True) -> None:
        self.gate = threading.Semaphore(0)
        self.stop = stop
        self.eta = eta
        self.closed = False
        PACERS.append(self)

    def release(self, steps: int) -> None:
        for _ in range(steps):
            self.gate.release()

    def __call__(self):
        try:
            yield Progress("loading the backbone", 0, 1, "/a/long/path/to/weights.pth")
            for step in range(1, STEPS + 1):
                if not self.gate.acquire(timeout=60):
                    raise TimeoutError("the test never released this step")
                metrics = {"loss": 1.0 / step, "eta_s": 6.0 * (STEPS - step)} if self.eta else {}
                yield Progress("train", step, STEPS, f"epoch {1 + (step - 1) // 10}/2", metrics)
                if step % 10 == 0:
                    yield Validation("train", step, STEPS, "validated", metrics, dice=0.5, loss=0.1)
                if self.stop:
                    return f"stopped at {step}"
            return "done"
        finally:
            self.closed = True


class Owner(QWidget):
    """A stand-in widget: a status label and the callbacks a widget gives a Job."""

    def __init__(self) -> None:
        super().__init__()
        self.status = QLabel()
        QVBoxLayout(self).addWidget(self.status)
        self.results: list = []
        self.events: list = []
        self.finished = 0
        self.cancels = 0
        self.job: Job | None = None

    def start(self, gen, stop: Stop | None = None, with_on_cancel: bool = True) -> Job:
        self.job = Job(
            gen,
            "Fine-tuning",
            on_result=self.results.append,
            on_progress=self.events.append,
            on_finished=self._finished,
            stop=stop,
            status=self.status,
            on_cancel=self._cancel if with_on_cancel else None,
        )
        return self.job.start()

    def _cancel(self) -> None:  # the widget's own Cancel/Stop button
        self.cancels += 1
        self.job.cancel()

    def _finished(self) -> None:
        self.finished += 1
        self.status.setText("failed: see the notification" if self.job.errored else "finished")


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1600, 1000)
    return viewer


@pytest.fixture
def owner(qtbot, viewer):
    widget = Owner()
    viewer.window.add_dock_widget(widget, name="owner")
    yield widget
    while PACERS:
        PACERS.pop().release(2 * STEPS)
    if widget.job is not None:
        qtbot.waitUntil(lambda: widget.job.done, timeout=10_000)


def test_status_text_and_durations():
    assert duration_text(3) == "5 s" and duration_text(41) == "40 s" and duration_text(110) == "2 min"
    assert duration_text(3900) == "1 h 5 min" and duration_text(7200) == "2 h"
    event = Progress("train", 40, 200, "epoch 2/10", {"eta_s": 118.0})
    assert status_text(event, 118.0) == "training: step 40/200 (epoch 2/10) · about 2 min left"
    assert status_text(Progress("predict", 3, 12), 30) == "predicting: tile 3/12 · about 30 s left"
    assert status_text(Progress("loading the heads", 0, 1, "/some/path.safetensors")) == "loading the heads…"
    assert status_text(Progress("train", 200, 200), 0.0) == "training: step 200/200"


def test_dock_bar_and_status_advance_with_the_job(qtbot, viewer, owner):
    """The activity dock's bar takes each event's total and value (it stayed at 0 % when only ``n`` was set);
    the status label shows the phase, the step and the time left from ``eta_s``."""
    paced = Paced()
    job = owner.start(paced())
    qtbot.waitUntil(lambda: owner.status.text() == "loading the backbone…", timeout=10_000)
    bar = dock_bar(viewer, job)
    assert (bar.qt_progress_bar.minimum(), bar.qt_progress_bar.maximum()) == (0, 0)  # busy: no count yet
    paced.release(10)
    qtbot.waitUntil(lambda: bar.qt_progress_bar.value() == 10, timeout=10_000)
    assert bar.qt_progress_bar.maximum() == STEPS
    assert bar.description_label.text() == "Fine-tuning: training: "
    assert bar.eta_label.text().startswith("10/20 · ") and bar.eta_label.text().endswith(" left")
    qtbot.waitUntil(lambda: owner.status.text().startswith("training: step 10/20"), timeout=10_000)
    assert owner.status.text() == "training: step 10/20 (validated) · about 1 min left"
    assert owner.status.wordWrap()
    paced.release(5)
    qtbot.waitUntil(lambda: bar.qt_progress_bar.value() == 15, timeout=10_000)
    assert owner.status.text() == "training: step 15/20 (epoch 2/2) · about 30 s left"
    paced.release(STEPS)
    wait_for(qtbot, job)
    assert owner.results == ["done"] and owner.finished == 1 and paced.closed
    assert [e.done for e in owner.events if type(e) is Progress and e.task == "train"] == list(range(1, STEPS + 1))
    assert sum(isinstance(e, Validation) for e in owner.events) == 2  # every event reached the widget, in order


def test_time_left_from_the_rate_without_eta(qtbot, viewer, owner, monkeypatch):
    """Without an ``eta_s`` metric the time left comes from the rate of ``done`` since the phase began."""
    clock = iter(float(t) for t in range(0, 1000, 3))  # each event is 3 s after the one before
    monkeypatch.setattr(_jobs, "_clock", lambda: next(clock))
    paced = Paced(eta=False)
    job = owner.start(paced())
    paced.release(4)
    qtbot.waitUntil(lambda: owner.status.text().startswith("training: step 4/20"), timeout=10_000)
    # the first train event starts the phase's clock at step 1; 3 steps later 9 s passed: 3 s a step, 16 to go
    assert owner.status.text() == "training: step 4/20 (epoch 1/2) · about 50 s left"
    paced.release(STEPS)
    wait_for(qtbot, job)


def test_dock_cancel_drops_the_result(qtbot, viewer, owner):
    """Without a stop, the dock's Cancel button runs the widget's own Cancel: the result is dropped and the
    generator closed (it did nothing when only napari's ``is_canceled`` was set)."""
    paced = Paced()
    job = owner.start(paced())
    paced.release(3)
    bar = dock_bar(viewer, job)
    qtbot.waitUntil(lambda: bar.qt_progress_bar.value() == 3, timeout=10_000)
    qtbot.mouseClick(bar.cancel_button, Qt.MouseButton.LeftButton)  # the enum: PyQt6 refuses a plain int
    paced.release(STEPS)  # the worker ends at its next event; had it gone on, it would return "done"
    wait_for(qtbot, job, timeout_ms=10_000)
    assert owner.cancels == 1 and job.cancelled and owner.results == [] and paced.closed
    assert owner.finished == 1 and owner.status.text() == "finished"


def test_dock_cancel_stops_a_job_with_a_stop(qtbot, viewer, owner):
    """With a :class:`Stop` the dock's Cancel is the widget's Stop: the run ends at its next step and its
    result (what it kept) arrives; without the widget's callback, Job's own cancel does the same."""
    for with_on_cancel in (True, False):
        stop = Stop()
        paced = Paced(stop)
        before = owner.cancels
        job = owner.start(paced(), stop=stop, with_on_cancel=with_on_cancel)
        paced.release(4)
        bar = dock_bar(viewer, job)
        qtbot.waitUntil(lambda bar=bar: bar.qt_progress_bar.value() == 4, timeout=10_000)
        bar.cancel_button.click()
        assert stop
        paced.release(1)
        wait_for(qtbot, job, timeout_ms=10_000)
        assert owner.results[-1] == "stopped at 5" and not job.cancelled
        assert owner.cancels - before == int(with_on_cancel)


def test_an_error_shows_whole_in_the_status(qtbot, viewer, owner, monkeypatch):
    """The full message (what, why, the fix) replaces the widget's "failed" line, wrapped; the toast still
    shows. A "cannot start" error replaces the previous status too."""
    shown = collect_errors(monkeypatch, _jobs)
    why = "the heads were trained on 3-channel images but the images give 1 channel: set the channel axis"

    def failing():
        yield Progress("train", 1, 2)
        raise InputError(why)

    job = owner.start(failing())
    wait_for(qtbot, job)
    assert job.errored and owner.finished == 1
    assert owner.status.text() == f"Fine-tuning failed: {why}" == job.error_text == shown[-1]
    assert owner.status.wordWrap()
    owner.status.setText("done; Segment now uses /some/heads.safetensors")
    report_error(f"Fine-tuning cannot start: {why}", owner.status)
    assert owner.status.text() == f"Fine-tuning cannot start: {why}" == shown[-1]


def test_closing_the_viewer_during_a_job(qtbot, viewer, owner):
    """Closing the viewer mid-run cancels the job and runs none of the (deleted) widget's callbacks: before,
    the widget's ``on_finished`` touched deleted Qt objects, which aborts a PyQt process."""
    paced = Paced()
    job = owner.start(paced())
    paced.release(2)
    qtbot.waitUntil(lambda: len(owner.events) >= 3, timeout=10_000)
    viewer.close()
    paced.release(STEPS)
    wait_for(qtbot, job, timeout_ms=10_000)
    assert job.cancelled and paced.closed and owner.results == [] and owner.finished == 0
    assert job not in _jobs._RUNNING


@pytest.fixture
def nuclei_viewer(viewer, tmp_path):
    from napari_dinounet._widgets.segment import SegmentWidget
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, _ = load_nuclei()
    viewer.add_image(np.tile(image, (2, 2)), name="nuclei")  # 1024x1024: a run of many tiles
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(write_tiny_heads(tmp_path / "heads.safetensors", patch_size=64)))
    widget.tile_spin.setValue(64)
    return viewer, widget


def test_dock_cancel_cancels_a_real_segment_run(qtbot, nuclei_viewer):
    """The dock's Cancel during a real Segment run: the run ends early, no labels layer appears, and the
    widget says so, exactly as after its own Cancel button."""
    viewer, widget = nuclei_viewer
    job = widget.run()
    bar = dock_bar(viewer, job)
    qtbot.waitUntil(lambda: bar.qt_progress_bar.value() >= 2, timeout=60_000)
    total = bar.qt_progress_bar.maximum()
    assert total > 20
    bar.cancel_button.click()
    wait_for(qtbot, job, timeout_ms=30_000)
    assert job.cancelled and "nuclei labels" not in viewer.layers
    assert widget.status.text() == "cancelled: nothing was changed"
    assert job._bar.n < total


def test_closing_the_viewer_during_a_segment_run(qtbot, nuclei_viewer):
    """The walkthrough's abort: closing the viewer mid-Segment; the job ends cancelled and nothing raises
    (pytest-qt fails the test on an exception in a Qt slot)."""
    viewer, widget = nuclei_viewer
    job = widget.run()
    qtbot.waitUntil(lambda: job._task == "predict", timeout=60_000)
    viewer.close()
    wait_for(qtbot, job, timeout_ms=30_000)
    assert job.cancelled and job not in _jobs._RUNNING


def test_closing_the_viewer_during_fine_tuning(qtbot, viewer, tmp_path):
    """The same for a real Fine-tune run: the training ends soon after the window closes, nothing raises."""
    from napari_dinounet._widgets.finetune import FRESH_HEADS, FineTuneWidget
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels((instances > 0).astype(np.uint8), name="corrected")
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.start_combo.setCurrentText(FRESH_HEADS)
    widget.rows[0].labels.set_layer(viewer.layers["corrected"])
    widget.steps_spin.setValue(500)
    widget.patch_spin.setValue(64)
    widget.cache_check.setChecked(False)
    widget.out_edit.setText(str(tmp_path / "tuned.safetensors"))
    job = widget.start()
    qtbot.waitUntil(lambda: job._task == "train" and job._bar.n >= 3, timeout=60_000)
    viewer.close()
    wait_for(qtbot, job, timeout_ms=30_000)
    assert job._bar.n < 500 and job not in _jobs._RUNNING
