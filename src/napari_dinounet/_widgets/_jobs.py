"""Running a progress generator (prediction, training) in a napari thread worker.

The generator runs in a worker thread and never touches Qt; its :class:`~..engine.progress.Progress`
events travel to the GUI thread through ``worker.yielded``, where they move a napari progress bar (and
whatever else the widget connects). Cancel is ``worker.quit()``: the worker stops at the next event, the
result is dropped, and the generator is closed so its cleanup runs. Errors become napari notifications
that say what to do; the bar closes and the widget's ``on_finished`` runs whatever happened.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error

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


class Job:
    """One background run of ``gen`` with a napari progress bar that has a Cancel button.

    ``on_result(value)`` gets the generator's return value in the GUI thread (not after Cancel or an
    error); ``on_progress(event)`` gets each event; ``on_finished()`` runs last in every case.
    ``stop``: the :class:`Stop` the generator checks; when given, Cancel asks it to end early and keep
    what it has (its result still arrives) instead of dropping the result.
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
    ) -> None:
        self.what = what
        self._gen = gen
        self._stop = stop
        self._on_result = on_result
        self._on_progress = on_progress
        self._on_finished = on_finished
        self._task = None
        self._bar = cancelable_progress(total=0, desc=what, cancel_callback=self.cancel)
        self.worker = create_worker(_run_in_worker, gen, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._progress)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.worker.aborted.connect(self._aborted)  # also napari's own task-status Cancel
        self.errored = False
        self.cancelled = False
        self.done = False

    def start(self) -> Job:
        self.worker.start()
        return self

    def cancel(self) -> None:
        """End at the next event: early and keeping the result with a ``stop``, else dropping it (the layer
        or checkpoint the user had stays as it was)."""
        if self._stop is not None:
            self._stop.set()
            return
        self.cancelled = True
        self.worker.quit()

    def _aborted(self) -> None:
        self.cancelled = True

    def _progress(self, event) -> None:
        if event.task != self._task:  # a new phase restarts the bar
            self._task = event.task
            self._bar.reset(total=event.total)
            self._bar.set_description(f"{self.what}: {event.task}")
        self._bar.total = event.total
        self._bar.n = event.done
        self._bar.refresh()
        if self._on_progress is not None:
            self._on_progress(event)

    def _returned(self, value) -> None:
        if not self.cancelled:
            self._on_result(value)

    def _errored(self, exc: BaseException) -> None:
        self.errored = True
        if isinstance(exc, RuntimeFailure):
            exc = exc.error
        from ..engine.errors import DinoUNetError

        if not isinstance(exc, DinoUNetError):
            logger.error("%s failed", self.what, exc_info=exc)
        show_error(error_message(exc, self.what))

    def _finished(self) -> None:
        # The worker thread has let go of the generator: closing it here runs its cleanup after Cancel.
        self._gen.close()
        self._bar.close()
        self.done = True
        if self._on_finished is not None:
            self._on_finished()
