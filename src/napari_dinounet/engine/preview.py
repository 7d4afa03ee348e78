"""Live preview while training: the current heads predict the part of an image the user looks at.

:func:`with_previews` wraps a training generator (:func:`.train.train`) and, between its steps, lets the
model being trained predict a :class:`PreviewView` (a 2D plane and a region of it), yielding the result
as a :class:`Preview` event beside the training's own events. The view is read from a
:class:`PreviewTarget` that another thread (napari's GUI, following the camera) may replace at any time;
it holds plain arrays and numbers only. Previews are scheduled by a time budget: the time spent
predicting stays within ``share`` (default 20 %) of the time spent training, and at most one preview runs
every ``interval_s`` seconds. The model is predicted in eval mode under no-grad and put back in training
mode (:func:`.predict.sliding_window` restores it), so the training itself is unchanged: same steps, same
losses, same heads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .progress import Progress, Validation

if TYPE_CHECKING:  # torch loads with the first prediction: the widgets import this module when they open
    import torch

PREVIEW_SHARE = 0.2  # of the training time, at most, spent on previews
PREVIEW_INTERVAL_S = 2.0  # between two previews, at least: a preview every few seconds is enough to watch
Region = tuple[tuple[int, int], tuple[int, int]]  # ((y0, y1), (x0, x1)), half-open, in the plane's pixels


@dataclass(frozen=True)
class PreviewView:
    """What to preview: ``plane`` (H, W) or (H, W, C) with ``channel_axis`` -1 (a view of the image, not a
    copy), ``region`` inside it, and ``key``, the caller's name for the plane (e.g. the slice index of a
    stack) that comes back with the prediction."""

    plane: np.ndarray
    region: Region
    channel_axis: int | None = None
    key: tuple = ()


class PreviewTarget:
    """The view to preview next, set by one thread (the GUI) and read by another (the training worker)."""

    def __init__(self, view: PreviewView | None = None) -> None:
        self._lock = threading.Lock()
        self._view = view

    def set(self, view: PreviewView | None) -> None:
        with self._lock:
            self._view = view

    def get(self) -> PreviewView | None:
        with self._lock:
            return self._view


@dataclass(frozen=True)
class Preview(Progress):
    """A prediction of the heads being trained, after ``done`` of ``total`` steps (task ``"train"``, message
    and ``eta_s`` of that step's event, so a progress bar and a status line keep their phase; ``metrics``
    has ``preview_s``, never ``loss``: it is not a step).

    labels: (y1 - y0, x1 - x0) class indices of ``view.region``; seconds: what predicting it took.
    """

    labels: np.ndarray | None = None
    view: PreviewView | None = None
    seconds: float = 0.0


class PreviewSchedule:
    """When the next preview may run: ``interval_s`` after the last one, and only while the time spent on
    previews (counting the next one as long as the last) stays within ``share`` of the training time."""

    def __init__(
        self,
        share: float | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.share = PREVIEW_SHARE if share is None else share
        self.interval_s = PREVIEW_INTERVAL_S if interval_s is None else interval_s
        self.clock = clock
        self.started = clock()
        self.preview_s, self.last_cost, self.last_end = 0.0, 0.0, self.started

    @property
    def training_s(self) -> float:
        return self.clock() - self.started - self.preview_s

    def due(self) -> bool:
        now = self.clock()
        if now - self.last_end < self.interval_s:
            return False
        return self.preview_s + self.last_cost <= self.share * self.training_s

    def record(self, seconds: float) -> None:
        self.preview_s += seconds
        self.last_cost = seconds
        self.last_end = self.clock()


def predict_view(model: torch.nn.Module, view: PreviewView, *, normalization, patch_size: int) -> np.ndarray:
    """The labels (y1 - y0, x1 - x0) of ``model`` on ``view.region``.

    A preview is cheap rather than exact: only the tiles of ``patch_size`` that overlap the region run,
    from a grid of tiles that do not overlap (step 1: a quarter of the tiles of a step-0.5 run), with the
    whole plane's statistics (:func:`.predict.sliding_window`'s ``region``).
    """
    from .outputs import Labels
    from .predict import image_layout, sliding_window
    from .progress import drain

    layout = image_layout(view.plane, view.channel_axis)
    (labels,) = drain(
        sliding_window(
            model,
            view.plane,
            layout,
            (Labels(),),
            patch_size=patch_size,
            step=1.0,
            normalization=normalization,
            region=view.region,
        )
    )
    return labels


def with_previews(
    run: Generator[Progress, None, object],
    model: torch.nn.Module,
    target: PreviewTarget,
    *,
    normalization,
    patch_size: int,
    schedule: PreviewSchedule | None = None,
) -> Generator[Progress, None, object]:
    """``run``'s events, and a :class:`Preview` of ``target``'s view after a training step when the
    ``schedule`` (default: :data:`PREVIEW_SHARE` of the training time, every :data:`PREVIEW_INTERVAL_S` at
    most) allows; returns ``run``'s result.

    model: the module ``run`` trains in place (e.g. the ``model`` given to :func:`.train.train`).
    normalization, patch_size: how the training normalises its images, and its patch (the preview's tile).
    Closing this generator closes ``run``.
    """
    schedule = schedule or PreviewSchedule()
    step = 0
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as end:
                return end.value
            yield event
            is_step = event.task == "train" and "loss" in event.metrics and not isinstance(event, Validation)
            if not is_step or event.done <= step:
                continue
            step = event.done
            view = target.get()
            if view is None or not schedule.due() or event.done >= event.total:
                continue
            started = time.perf_counter()
            labels = predict_view(model, view, normalization=normalization, patch_size=patch_size)
            seconds = time.perf_counter() - started
            schedule.record(seconds)
            # the step's message and time left, so a status line reads on as before (no loss: not a step)
            metrics = {"preview_s": seconds, **({"eta_s": event.metrics["eta_s"]} if "eta_s" in event.metrics else {})}
            yield Preview(
                "train", event.done, event.total, event.message, metrics, labels=labels, view=view, seconds=seconds
            )
    finally:
        run.close()
