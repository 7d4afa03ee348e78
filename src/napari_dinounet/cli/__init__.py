"""The ``dinounet`` command line: one module per sub-command.

Each module in :data:`COMMANDS` defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules import torch and the engine inside ``run`` so that ``dinounet --help``
stays fast. A :class:`~napari_dinounet.engine.errors.DinoUNetError` ends the command with its message
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

COMMANDS = ("info", "summary", "predict", "evaluate", "train", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinounet", description="Dino U-Net segmentation (napari-dinounet engine)")
    parser.add_argument("--version", action="version", version=f"napari-dinounet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            continue  # a command whose module is not written yet
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..engine.errors import DinoUNetError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DinoUNetError as err:
        print(f"dinounet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinounet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
