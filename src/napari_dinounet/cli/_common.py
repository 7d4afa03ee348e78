"""What several sub-commands share: where the backbone comes from, and signal handlers for a run."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading

# The backbone weights a command uses when --backbone is not given (train, predict, demo).
BACKBONE_ENV = "DINOUNET_BACKBONE"


def backbone_source(args: argparse.Namespace) -> str:
    """The backbone from --backbone or the environment; an error that says how to give one otherwise."""
    from ..engine.errors import InputError

    source = args.backbone or os.environ.get(BACKBONE_ENV)
    if not source:
        raise InputError(
            f"no backbone given: pass --backbone PATH (DINOv3 weights) or set {BACKBONE_ENV}; "
            "random:<variant> trains on a random backbone (testing only)"
        )
    return source


@contextlib.contextmanager
def signal_handler(signum: int, handler):
    """While the body runs, ``handler(signum, frame)`` handles ``signum``; the previous handler is put back.
    Only in the main thread, the one Python delivers signals to (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)
