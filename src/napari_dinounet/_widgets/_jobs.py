"""Running a progress generator (prediction, training) in a napari thread worker.

The generator runs in a worker thread and never touches Qt; its :class:`~..engine.progress.Progress`
events travel to the GUI thread through ``worker.yielded``, where they move a napari progress bar in the
activity dock (its value, total and phase), write the phase, the count and the time left into the
widget's status label, and reach whatever else the widget connects. Cancel is ``worker.quit()``: the
worker stops at the next event, the result is dropped, and the generator is closed so its cleanup runs;
with a :class:`Stop` it is a stop request instead. The activity dock's Cancel button does the same as the
widget's own button. Errors become napari notifications and, in full, the status label's text; the bar
closes and the widget's ``on_finished`` runs whatever happened. When the widget goes away (its viewer
closed) during a run, the run is cancelled and none of the widget's callbacks run any more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject

try:  # whether a Qt object's C++ side was deleted (its window closed)
    from qtpy import sip

    _is_deleted = sip.isdeleted
except ImportError:  # PySide
    import shiboken6 as _shiboken  # type: ignore[import-not-found]

    def _is_deleted(obj) -> bool:
        return not _shiboken.isValid(obj)


logger = logging.getLogger(__name__)


class Stop:
    """A stop request a job generator checks between its events (graceful Stop, unlike Cancel)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _leave_a_core_to_the_gui() -> None:
    """Run torch on all cores but one in this (worker) thread, so the GUI thread always has one.

    Measured on 2 busy cores: a training step of the tiny model took 0.13 s with one torch thread and
    0.75 s with two, whose OpenMP workers spin against each other and the GUI. OpenMP's thread count
    is per calling thread, so this is set in the worker.
    """
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), max(1, _available_cores() - 1)))


class RuntimeFailure(Exception):
    """A job's ``RuntimeError``, carried out of the worker under another type.

    superqt's generator worker takes any ``RuntimeError`` for a sign that the worker was deleted: it
    only warns, and emits neither ``errored`` nor ``finished``, which would leave the widget waiting and
    the progress bar up forever. torch reports most failures, running out of memory included, as
    ``RuntimeError``.
    """

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def _run_in_worker(gen: Generator) -> Generator:
    """The worker's body: the job's own generator (so that the job can close it from outside)."""
    _leave_a_core_to_the_gui()
    try:
        return (yield from gen)
    except RuntimeError as error:
        raise RuntimeFailure(error) from error


def error_message(exc: BaseException, what: str) -> str:
    """What a user reads when ``what`` (e.g. "Segmentation") fails with ``exc``: the problem and the fix."""
    from ..engine.errors import DinoUNetError

    if isinstance(exc, DinoUNetError):
        return f"{what} failed: {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return (
            f"{what} ran out of accelerator memory. Fix: lower the tile (patch) size or the batch size, "
            "turn test-time augmentation off, close other GPU programs, or choose the CPU device."
        )
    if isinstance(exc, MemoryError):
        return (
            f"{what} ran out of memory. Fix: lower the tile (patch) size, process the current slice "
            "instead of the whole stack, or close other programs."
        )
    return f"{what} failed unexpectedly: {type(exc).__name__}: {exc} (the traceback is in the log)"


# the phase words of the engine's tasks in the status line ("training: step 40/200"); other tasks show as they are
_PHASES = {
    "train": ("training", "step "),
    "predict": ("predicting", "tile "),
    "cache features": ("caching features", "image "),
}


def duration_text(seconds: float) -> str:
    """A rounded duration a user reads at a glance: "5 s", "40 s", "2 min", "1 h 5 min"."""
    seconds = max(0.0, seconds)
    if seconds < 55:
        return f"{max(5, 5 * round(seconds / 5))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} h"


def status_text(event, seconds_left: float | None = None) -> str:
    """The status line of ``event``: its phase, the count, its message and the time left, e.g.
    "training: step 40/200 (epoch 2/4) · about 2 min left"; a phase without a count: "loading the heads…"."""
    phase, unit = _PHASES.get(event.task, (event.task, ""))
    if not (event.total > 1 or event.done):  # a phase without a count; its message is a path
        return f"{phase}…"
    text = f"{phase}: {unit}{event.done}/{event.total}"
    if event.message:
        text += f" ({event.message})"
    if seconds_left is not None and event.done < event.total:
        text += f" · about {duration_text(seconds_left)} left"
    return text


def report_error(message: str, status=None) -> None:
    """Show ``message`` whole in the widget's ``status`` label (wrapped; it replaces the previous status) and
    as a notification. For errors before a job starts ("Segmentation cannot start: ...")."""
    if status is not None:
        _show_status(status, message)
    show_error(message)


def _show_status(status, text: str) -> None:
    if hasattr(status, "setWordWrap"):
        status.setWordWrap(True)
    status.setText(text)


class _Bar(cancelable_progress):
    """napari's cancelable progress bar whose Cancel button (in the activity dock) calls back at once.

    napari's own ``cancel`` only sets ``is_canceled``, which matters to a loop iterating the bar; a job's
    bar is moved by hand, never iterated.
    """

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class _Eta:
    """Seconds left in the current phase: the event's ``eta_s`` metric when it has one, else from the rate
    of ``done`` since the phase's first event."""

    def __init__(self) -> None:
        self.task, self.start, self.first_done = None, 0.0, 0

    def __call__(self, event, now: float) -> float | None:
        if event.task != self.task:
            self.task, self.start, self.first_done = event.task, now, event.done
        if "eta_s" in event.metrics:
            return float(event.metrics["eta_s"])
        units = event.done - self.first_done
        if units <= 0 or event.total <= event.done or now - self.start < 1.0:
            return None
        return (now - self.start) / units * (event.total - event.done)


_BAR_FORMAT = "{desc}|{n_fmt}/{total_fmt} · {remaining} left"  # napari shows what follows the last "|"
_clock = time.perf_counter  # the time-left estimate's clock (a test sets its own)
_RUNNING: set[Job] = set()  # a job lives until its worker has finished, whatever happens to its widget


class Job:
    """One background run of ``gen`` with a napari progress bar that has a Cancel button.

    ``on_result(value)`` gets the generator's return value in the GUI thread (not after Cancel or an
    error); ``on_progress(event)`` gets each event; ``on_finished()`` runs last in every case.
    ``stop``: the :class:`Stop` the generator checks; when given, Cancel asks it to end early and keep
    what it has (its result still arrives) instead of dropping the result.
    ``status``: the widget's status label (a ``QLabel``): each event writes its phase, count and time left
    there (:func:`status_text`), and an error its whole message, after ``on_finished`` ran.
    ``on_cancel``: what the activity dock's Cancel button does (the widget's own Cancel or Stop, which
    calls :meth:`cancel`); without it the dock's Cancel calls :meth:`cancel`.
    ``owner``: the widget; when it is deleted (its viewer closed) during the run, the run is cancelled and
    no callback runs any more. Default: the QObject that ``on_finished`` or ``on_result`` is a method of.

    Events are handled in order, one at a time: napari's bar processes Qt events while it redraws, and an
    event (or the end) arriving meanwhile waits until the one before it was handled.
    """

    def __init__(
        self,
        gen: Generator,
        what: str,
        *,
        on_result: Callable[[Any], None],
        on_progress: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        stop: Stop | None = None,
        status=None,
        on_cancel: Callable[[], None] | None = None,
        owner: QObject | None = None,
    ) -> None:
        self.what = what
        self._gen = gen
        self._stop = stop
        self._on_result = on_result
        self._on_progress = on_progress
        self._on_finished = on_finished
        self._on_cancel = on_cancel
        self._status = status
        self._owner = owner if owner is not None else _owner_of(on_finished, on_result)
        self._orphaned = False
        if self._owner is not None:
            self._owner.destroyed.connect(self._owner_destroyed)
        self._task = None
        self._eta = _Eta()
        self._queue: deque[tuple[Callable, tuple]] = deque()
        self._handling = False
        # beside napari's bar: the count and the time left, short enough that the Cancel button stays in view
        self._bar = _Bar(total=0, desc=what, cancel_callback=self._dock_cancel, bar_format=_BAR_FORMAT)
        self.worker = create_worker(_run_in_worker, gen, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(lambda event: self._in_order(self._progress, event))
        self.worker.returned.connect(lambda value: self._in_order(self._returned, value))
        self.worker.errored.connect(lambda exc: self._in_order(self._errored, exc))
        self.worker.finished.connect(lambda: self._in_order(self._finished))
        self.worker.aborted.connect(self._aborted)  # also napari's own task-status Cancel
        self.errored = False
        self.error_text: str | None = None  # the message a user read, when the run failed
        self.cancelled = False
        self.cancel_requested = False
        self.done = False
        self.last_status = ""

    def start(self) -> Job:
        _RUNNING.add(self)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """End at the next event: early and keeping the result with a ``stop``, else dropping it (the layer
        or checkpoint the user had stays as it was)."""
        self.cancel_requested = True
        if self._stop is not None:
            self._stop.set()
            return
        self.cancelled = True
        self.worker.quit()

    def _dock_cancel(self) -> None:
        """The activity dock's Cancel: the widget's own Cancel/Stop when it gave one, else :meth:`cancel`."""
        if self.done:
            return
        if self._on_cancel is not None and self._alive():
            self._on_cancel()
        if not self.cancel_requested:  # the widget's callback did not cancel (or there is none)
            self.cancel()

    def _owner_destroyed(self, *_) -> None:
        self._orphaned = True
        if not self.done:
            self.cancel()

    def _alive(self) -> bool:
        """Whether the widget's callbacks may run (its Qt objects still exist)."""
        if self._orphaned or (self._owner is not None and _is_deleted(self._owner)):
            self._orphaned = True
            return False
        return True

    def _aborted(self) -> None:
        self.cancelled = True

    def _in_order(self, handler: Callable, *args) -> None:
        self._queue.append((handler, args))
        if self._handling:  # called from within the previous handler's processEvents
            return
        self._handling = True
        try:
            while self._queue:
                handler, args = self._queue.popleft()
                handler(*args)
        finally:
            self._handling = False

    def _set_status(self, text: str) -> None:
        self.last_status = text
        status = self._status
        if status is not None and self._alive() and not (isinstance(status, QObject) and _is_deleted(status)):
            _show_status(status, text)

    def _progress(self, event) -> None:
        bar = self._bar
        # a phase without a count (0 of 1: loading, preparing) shows napari's busy bar
        total = event.total if event.total > 1 or event.done else 0
        if event.task != self._task:  # a new phase restarts the bar
            self._task = event.task
            bar.reset(total=total)
            bar.set_description(f"{self.what}: {_PHASES.get(event.task, (event.task,))[0]}")
        if bar.total != total:
            bar.total = total  # emits napari's total event: the dock's bar takes the range
        bar.n = min(event.done, total) if total else 0
        bar.events.value(value=bar.n)  # napari's dock bar moves on this event, which only update() emits
        bar.refresh()  # the count and time left beside the bar (napari's eta event)
        text = status_text(event, self._eta(event, _clock()))
        if self.cancel_requested and self._stop is not None:
            text = f"stopping after this step · {text}"
        if self._on_progress is not None and self._alive():
            self._on_progress(event)
        self._set_status(text)

    def _returned(self, value) -> None:
        if not self.cancelled and self._alive():
            self._on_result(value)

    def _errored(self, exc: BaseException) -> None:
        self.errored = True
        if isinstance(exc, RuntimeFailure):
            exc = exc.error
        from ..engine.errors import DinoUNetError

        if not isinstance(exc, DinoUNetError):
            logger.error("%s failed", self.what, exc_info=exc)
        self.error_text = error_message(exc, self.what)
        show_error(self.error_text)

    def _finished(self) -> None:
        # The worker thread has let go of the generator: closing it here runs its cleanup after Cancel.
        try:
            self._gen.close()
        finally:
            self._bar.close()
            self.done = True
            _RUNNING.discard(self)
        if self._alive():
            if self._on_finished is not None:
                self._on_finished()
            if self.error_text is not None:  # the whole message replaces the widget's own "failed" line
                self._set_status(self.error_text)


def _owner_of(*callbacks) -> QObject | None:
    """The Qt object (the widget) that the first of ``callbacks`` that is a bound method belongs to."""
    for callback in callbacks:
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, QObject):
            return owner
    return None
