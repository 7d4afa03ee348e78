"""The ``dinounet`` command line: one module per sub-command.

Each module in :data:`COMMANDS` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch and the engine inside ``run`` so that ``dinounet --help``
stays fast (and so that :func:`main` can make idle OpenMP threads sleep before torch starts). A
:class:`~napari_dinounet.engine.errors.DinoUNetError` ends the command with its message and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import warnings

from .. import __version__
from ._common import signal_handler

COMMANDS = ("info", "summary", "predict", "evaluate", "train", "demo", "export-bioimageio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinounet", description="Dino U-Net segmentation (napari-dinounet engine)")
    parser.add_argument("--version", action="version", version=f"napari-dinounet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name.replace('-', '_')}":
                raise
            continue  # a command whose module is not written yet
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin; effective only before torch is first imported.

    Spinning threads that compete with other work for the cores are ruinous: on a shared 2-core machine
    under load a training step took 18 s with PyTorch's default 2 spinning threads, 0.4 s with passive
    ones (measured). A user's own OMP_WAIT_POLICY wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, SLURM's scancel, docker stop), handled as Ctrl-C: a message and resumable state."""


def sigterm_as_interrupt():
    """While the body runs, SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so that generators close and atomic writes clean up. Elsewhere: nothing changes."""

    def terminate(signum, frame):
        raise Terminated

    return signal_handler(signal.SIGTERM, terminate)


@contextlib.contextmanager
def warnings_as_lines(command: str):
    """Show warnings (0/255 masks mapped, random backbone, no foreground) as ``dinounet CMD: warning: ...``
    lines, not with Python's source file and line number, which mean nothing to a user."""

    def format_line(message, category, filename, lineno, line=None):
        return f"dinounet {command}: warning: {message}\n"

    previous = warnings.formatwarning  # formatting only: code that records warnings still gets them
    warnings.formatwarning = format_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: list[str] | None = None) -> int:
    passive_openmp_threads()  # before any command imports torch
    from ..engine.errors import DinoUNetError

    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt(), warnings_as_lines(args.command):
            return int(args.run(args) or 0)
    except DinoUNetError as err:
        print(f"dinounet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"dinounet {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
