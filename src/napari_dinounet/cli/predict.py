"""``dinounet predict``: segment image files with trained heads, writing each result like its input.

Inputs are files, folders, nnU-Net ``imagesTs`` folders or dataset roots (see ``engine/io.find_images``).
Each prediction goes to ``--out/<case><input extension>`` (JPEG inputs give PNG), with the input's
spacing, units and NIfTI header (``io.write_labels``). Stacks are predicted slice by slice along the
file's slice axis (z: the first axis of TIFF/.npy stacks, the last of NIfTI volumes) or ``--axis``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment image files (files, folders, nnU-Net imagesTs) with a heads checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import BACKBONE_ENV

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders, or nnU-Net imagesTs / dataset folders")
    parser.add_argument("--heads", required=True, type=Path, metavar="CKPT", help="the heads checkpoint (.safetensors)")
    parser.add_argument(
        "--backbone", metavar="SOURCE",
        help=f"the DINOv3 weights the heads were trained with; default: the {BACKBONE_ENV} environment variable",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the predictions")
    parser.add_argument("--tile", type=int, help="tile size in pixels, a multiple of 32; default: the training patch")
    parser.add_argument("--step", type=float, default=0.5, help="tile offset as a fraction of the tile; default 0.5")
    parser.add_argument("--tta", action="store_true", help="average over mirrored tiles too (4x slower)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass; default 4")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu; default auto")
    parser.add_argument(
        "--axis", type=int, metavar="N",
        help="for 3D images: the spatial axis (channels not counted) to cut 2D slices along; default: the file's z",
    )
    parser.add_argument(
        "--probabilities", action="store_true",
        help="also write class probabilities, float32 with classes first, as <case>_probabilities.npy",
    )
    parser.add_argument("--allow-backbone-mismatch", action="store_true",
                        help="use heads trained with another backbone of the same width (results may be poor)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _slice_axis(image, axis: int | None) -> int | None:
    """The slice axis among ``image``'s spatial axes: ``--axis``, else the file's own (None for 2D)."""
    from ..engine.errors import InputError

    spatial = image.spatial_axes
    if len(spatial) < 3:
        return None
    if axis is None:
        return spatial.index(image.slice_axis)
    if not -len(spatial) <= axis < len(spatial):
        raise InputError(
            f"--axis {axis} does not exist in {image.path.name} (spatial shape {image.spatial_shape}): use 0 to 2"
        )
    return axis % len(spatial)


def _check_outputs(cases, out_dir: Path) -> list[Path]:
    """Output paths, refusing any that would overwrite an input."""
    from ..engine.errors import InputError
    from ..engine.io import output_path_for

    inputs = {p.resolve() for case in cases for p in case.paths}
    outputs = [output_path_for(case, out_dir) for case in cases]
    for case, target in zip(cases, outputs):
        if target.resolve() in inputs:
            raise InputError(
                f"writing the prediction of {case.name!r} to {target} would overwrite an input: choose another --out"
            )
    return outputs


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine.atomic import atomic_path
    from ..engine.backbone import load_backbone
    from ..engine.checkpoint import load_heads
    from ..engine.device import pick_device
    from ..engine.errors import InputError
    from ..engine.io import find_images, read_case, write_labels
    from ..engine.predict import predict
    from ..engine.progress import run_with_bar
    from .train import backbone_source

    cases = find_images(args.inputs)
    outputs = _check_outputs(cases, args.out)
    device = pick_device(args.device)
    backbone = load_backbone(backbone_source(args), device=device)
    model, metadata = load_heads(
        args.heads, backbone, allow_backbone_mismatch=args.allow_backbone_mismatch, device=device
    )
    for number, (case, target) in enumerate(zip(cases, outputs), start=1):
        image = read_case(case)
        channels = 1 if image.channel_axis is None else image.data.shape[image.channel_axis]
        if metadata.in_channels and channels != metadata.in_channels:
            raise InputError(
                f"{case.name}: the heads were trained on {metadata.in_channels}-channel images but this image has "
                f"{channels}; give images like the training ones"
            )
        job = predict(
            model, image.data, patch_size=args.tile or metadata.patch_size, step=args.step, tta=args.tta,
            batch_size=args.batch, normalization=metadata.normalization, channel_axis=image.channel_axis,
            slice_axis=_slice_axis(image, args.axis), probabilities=args.probabilities, device=device,
        )
        result = run_with_bar(job, desc=f"[{number}/{len(cases)}] {case.name}", disable=args.quiet)
        labels = result.argmax(axis=0) if args.probabilities else result
        write_labels(target, labels, like=image)
        print(f"{case.name}: {target}")
        if args.probabilities:
            probabilities = target.with_name(f"{case.name}_probabilities.npy")
            with atomic_path(probabilities) as tmp:
                np.save(tmp, result)
            print(f"{case.name}: {probabilities}")
    return 0
