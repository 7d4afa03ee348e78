"""Progress events for long work, and the two ways of driving a progress generator.

Long work (prediction, training) is a generator: it yields :class:`Progress` events and *returns* its
result, which arrives as ``StopIteration.value``. The napari widgets run such a generator in a
``thread_worker`` (closing it is how Cancel works); the CLI drives it with :func:`run_with_bar`;
tests and Python users call :func:`drain`.
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
