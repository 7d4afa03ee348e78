"""Progress events for long work, and the two ways of driving a progress generator.

Long work (prediction, training) is a generator: it yields :class:`Progress` events and *returns* its
result, which arrives as ``StopIteration.value``. The napari widgets run such a generator in a
``thread_worker`` (closing it is how Cancel works); the CLI drives it with :func:`run_with_bar`;
tests and Python users call :func:`drain`.

Event kinds: a plain :class:`Progress` says how far the work is (a step, a tile); a :class:`Validation`
reports a validation result, with its Dice in a typed field, so a consumer tells the two apart by type
(``isinstance(event, Validation)``) instead of guessing from the numbers. A validation keeps the task of
the work it belongs to (``"train"``): bars group events by task, and a task of its own would restart the
bar (and its rate) twice per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

Result = TypeVar("Result")
ProgressGenerator = Generator["Progress", None, Result]


@dataclass(frozen=True)
class Progress:
    """One report from long work.

    ``done`` of ``total`` units (tiles, steps) are finished; ``metrics`` carries named numbers
    that belong to this moment (``loss``, ``lr``, ``val_dice``, ``eta_s``, ``epoch`` ...).
    """

    task: str
    done: int
    total: int
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation(Progress):
    """A validation of the heads after ``done`` of ``total`` training steps (``done`` 0: before the first).

    ``dice``: mean foreground Dice on the validation crops (:func:`.train.validation_dice`); None when there is
    nothing to validate on (no validation samples, or no class present in either prediction or reference).
    ``loss``: the mean training loss over the steps since the last validation; None before the first step.
    ``metrics`` repeats both (``val_dice``, ``loss``) beside ``epoch`` and ``lr`` for displays that show
    metrics (the CLI's bar).
    ``scope``: what the Dice was scored on: ``"labels"`` (the validation labels, inside their masks) or
    ``"painted"`` (validation samples that are scribbles: the painted pixels only, far easier than the
    whole image, so displays should say so; see :data:`.train.PAINTED_SCOPE`).
    """

    dice: float | None = None
    loss: float | None = None
    scope: str = "labels"


def drain(gen: ProgressGenerator[Result], on_progress: Callable[[Progress], Any] | None = None) -> Result:
    """Run a progress generator to the end and return its result, passing each event to ``on_progress``."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def run_with_bar(gen: ProgressGenerator[Result], desc: str = "", disable: bool = False) -> Result:
    """Drive a progress generator with a tqdm bar on stderr (what the CLI does) and return its result.

    A Ctrl-C closes the generator, so its cleanup (``finally``) runs before the interrupt propagates.
    """
    from tqdm import tqdm

    bar = tqdm(desc=desc, disable=disable, unit="it", dynamic_ncols=True)
    task = None

    def show(event: Progress) -> None:
        nonlocal task
        if event.task != task:  # a new phase (e.g. caching, then training) restarts the bar
            task = event.task
            bar.reset(total=event.total)
            bar.set_description(f"{desc} {event.task}".strip())
        bar.total = event.total
        bar.n = event.done
        if event.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in event.metrics.items()}, refresh=False)
        bar.refresh()

    try:
        return drain(gen, show)
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        bar.close()
