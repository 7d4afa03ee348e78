"""``dinounet export-bioimageio``: trained heads and their backbone as a bioimage.io model package (spec 0.5).

Needs the ``bioimageio`` extra. The package (``engine/bioimageio``) holds the whole network's state dict, the
architecture imported from napari-dinounet, pre-processing matching the heads' normalisation, a test
input/output pair cut from ``--image`` (default: the bundled nuclei sample, for one-channel heads), a cover,
the DINOv3 licence and the training summary. ``dinounet predict --model model.zip`` loads it back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write heads and their backbone as a bioimage.io model package (.zip) [bioimageio extra]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._common import BACKBONE_ENV

    parser.add_argument("--heads", required=True, type=Path, metavar="CKPT", help="the heads checkpoint (.safetensors)")
    parser.add_argument(
        "--backbone",
        metavar="SOURCE",
        help=f"the DINOv3 weights the heads were trained with; default: the {BACKBONE_ENV} environment variable",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="ZIP", help="the package to write (model.zip)")
    parser.add_argument(
        "--image",
        type=Path,
        metavar="FILE",
        help="a 2D image like the training ones, for the package's test tensors (its middle, one patch); "
        "default: the bundled nuclei sample (one-channel heads)",
    )
    parser.add_argument("--name", help="the model's name in the zoo; default: from the class names")
    parser.add_argument("--author", action="append", metavar="NAME", help="an author (repeat for several)")
    parser.add_argument("--device", default="cpu", help="where the test output is computed; default cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from ..engine.bioimageio import check_environment, export_package
    from ..engine.errors import InputError
    from ..engine.predictor import Predictor
    from ._common import backbone_source

    check_environment()  # a bioimageio that cannot build packages is found out before the backbone loads
    if args.out.exists() and not args.overwrite:
        raise InputError(f"{args.out} exists already; nothing was written. Choose another --out or pass --overwrite")
    if args.out.suffix.lower() != ".zip":
        raise InputError(f"--out {args.out} must end in .zip: a bioimage.io package is a zip file")
    if args.image is None:
        from ..engine.bundled_data import load_nuclei

        image, channel_axis = load_nuclei()[0], None
    else:
        from ..engine.io import read_image

        found = read_image(args.image)
        image, channel_axis = found.data, found.channel_axis
    predictor = Predictor.from_checkpoint(args.heads, backbone_source(args), device=args.device)
    out = export_package(predictor, args.out, image, channel_axis=channel_axis, name=args.name, authors=args.author)
    print(f"wrote {out} (bioimage.io model, spec 0.5): test it with `bioimageio test {out}`")
    return 0
