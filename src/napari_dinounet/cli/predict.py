"""``dinounet predict``: segment image files with trained heads, writing each result like its input.

Inputs are files, folders, nnU-Net ``imagesTs`` folders, dataset roots (see ``engine/io.find_images``) or
OME-Zarr stores (``x.ome.zarr``: the ``--level`` chosen, read band by band; labels go to a new OME-Zarr
label store ``--out/x.ome.zarr`` with its own pyramid, see ``engine/io/omezarr``).
Each prediction goes to ``--out/<case><input extension>`` (JPEG inputs give PNG), with the input's
spacing, units and NIfTI header (``io.write_labels``). Stacks are predicted slice by slice along the
file's slice axis (z: the first axis of TIFF/.npy stacks, the last of NIfTI volumes) or ``--axis``;
with ``--planes`` along several planes, their class probabilities fused into one labels volume
(engine/volume.py). ``--uncertainty`` also writes ``<case>_uncertainty.tif`` beside it: float32 in [0, 1],
the normalised entropy of the class probabilities (:class:`engine.uncertainty.Uncertainty`; with ``--tta`` of
the mirrors' mean, so it also rises where the mirrors disagree), of the labels' shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment image files (files, folders, nnU-Net imagesTs) with a heads checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._common import BACKBONE_ENV

    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, or nnU-Net imagesTs / dataset folders"
    )
    network = parser.add_mutually_exclusive_group(required=True)
    network.add_argument("--heads", type=Path, metavar="CKPT", help="the heads checkpoint (.safetensors)")
    network.add_argument(
        "--model",
        type=Path,
        metavar="ZIP",
        help="a bioimage.io package written by `dinounet export-bioimageio` instead of --heads and --backbone",
    )
    parser.add_argument(
        "--backbone",
        metavar="SOURCE",
        help=f"the DINOv3 weights the heads were trained with; default: the {BACKBONE_ENV} environment variable",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the predictions")
    parser.add_argument("--tile", type=int, help="tile size in pixels, a multiple of 32; default: the training patch")
    parser.add_argument("--step", type=float, default=0.5, help="tile offset as a fraction of the tile; default 0.5")
    parser.add_argument("--tta", action="store_true", help="average over mirrored tiles too (4x slower)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass; default 4")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu; default auto")
    parser.add_argument(
        "--axis",
        type=int,
        metavar="N",
        help="for 3D images: the spatial axis (channels not counted) to cut 2D slices along; default: the file's z",
    )
    parser.add_argument(
        "--planes",
        metavar="PLANES",
        help="for 3D images: predict along these planes and fuse their class probabilities (mean): 'all', names "
        "(axial,coronal,sagittal: z, y, x of the file) or spatial axes (0,2); planes resampled in-plane to the "
        "finest voxel spacing and back",
    )
    parser.add_argument(
        "--plane-weights",
        metavar="W",
        help="with --planes: one weight per plane, comma-separated in the order of the axes (e.g. 1,1,2): a "
        "weighted mean of the probabilities; default equal weights",
    )
    parser.add_argument(
        "--channel-axis",
        type=int,
        metavar="N",
        help="the array axis that holds channels, for files that do not say (e.g. 0 for a (C, Z, Y, X) .npy); "
        "default: the file's own",
    )
    parser.add_argument(
        "--level",
        type=int,
        default=0,
        metavar="N",
        help="for multiscale OME-Zarr inputs: the resolution level to predict, read band by band (0: the finest); "
        "the labels store keeps that level's scale and translation",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write class probabilities, float32 with classes first, as <case>_probabilities.npy",
    )
    instances = parser.add_argument_group(
        "instance heads (trained with train --instances): the watershed that turns their maps into objects"
    )
    instances.add_argument(
        "--seed-threshold", type=float, help="interior probability an object's seed needs; default 0.5"
    )
    instances.add_argument(
        "--foreground-threshold", type=float, help="foreground probability an object's pixel needs; default 0.5"
    )
    instances.add_argument("--min-size", type=int, help="pixels an object needs (smaller ones are dropped); default 16")
    parser.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write per-pixel uncertainty (normalised entropy of the class probabilities; with --tta it "
        "includes the mirrors' disagreement), float32 in [0, 1], as <case>_uncertainty.tif",
    )
    parser.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="use heads trained with another backbone of the same width (results may be poor)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace files that already exist in --out")
    existing.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave cases whose prediction already exists in --out alone (continue a stopped run)",
    )
    parser.add_argument(
        "--force", action="store_true", help="run even when --step makes more than 10 times the tiles of --step 0.5"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _layout(image, axis: int | None):
    """The :class:`~..engine.layout.ImageLayout` of a file's data: its channel axis, and for 3D images the
    slice axis ``--axis`` (counted in the spatial axes) or else the file's own (z)."""
    from ..engine.layout import normalize_axis

    layout = image.layout
    if axis is None or layout.slice is None:  # a 2D image has no slice axis to choose: --axis has nothing to do
        return layout
    return layout.with_slice_dim(normalize_axis(axis, 3, "--axis", layout.spatial_shape))


def _with_channel_axis(image, axis: int):
    """``image`` with ``--channel-axis`` as its channel axis (a spacing that no longer fits is dropped)."""
    import dataclasses

    from ..engine.errors import InputError

    ndim = image.data.ndim
    if not -ndim <= axis < ndim:
        raise InputError(
            f"--channel-axis {axis} does not exist in {image.path.name} (shape {image.data.shape}): use 0 to {ndim - 1}"
        )
    image = dataclasses.replace(image, channel_axis=axis % ndim)
    if image.spacing is not None and len(image.spacing) != len(image.spatial_axes):
        image = dataclasses.replace(image, spacing=None, unit=None)
    return image


def _some(paths: list[Path], limit: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


UNCERTAINTY_SUFFIX = "_uncertainty.tif"


def uncertainty_path(labels_path: Path, case_name: str) -> Path:
    """Where a case's uncertainty map goes beside its labels: ``<case>_uncertainty.tif``."""
    return Path(labels_path).with_name(case_name + UNCERTAINTY_SUFFIX)


def _plan_outputs(cases, out_dir: Path, args: argparse.Namespace) -> list[tuple[object, Path]]:
    """(case, labels path) for every case to predict, checked before any work starts.

    Refuses: an output that is an input; an --out that is an input folder (predictions would mix into the
    data); existing files, unless --overwrite (replace them) or --skip-existing (leave those cases out).
    """
    from ..engine.atomic import probe_folder
    from ..engine.errors import InputError
    from ..engine.io import output_path_for, probabilities_path

    inputs = {p.resolve() for case in cases for p in case.paths}
    targets = [output_path_for(case, out_dir) for case in cases]
    for case, target in zip(cases, targets):
        if target.resolve() in inputs:
            raise InputError(
                f"writing the prediction of {case.name!r} to {target} would overwrite an input: choose another --out"
            )
    if out_dir.resolve() in {p.parent for p in inputs}:
        raise InputError(
            f"--out {out_dir} is a folder of input images: the predictions would mix into the data "
            "(and be read as images next time); choose another --out"
        )
    planned, existing = [], []
    for case, target in zip(cases, targets):
        outputs = [target] + ([probabilities_path(target, case.name)] if args.probabilities else [])
        outputs += [uncertainty_path(target, case.name)] if getattr(args, "uncertainty", False) else []
        found = [path for path in outputs if path.exists()]
        if found and args.skip_existing and len(found) == len(outputs):
            continue
        existing += found
        planned.append((case, target))
    if existing and not args.overwrite:
        raise InputError(
            f"{len(existing)} output file(s) already exist ({_some(existing)}); nothing was written. Choose another "
            "--out, keep them and predict only the rest (--skip-existing), or replace them (--overwrite)"
        )
    probe_folder(out_dir)  # an --out that cannot be written fails now, before the backbone loads
    return planned


def _tiling_options(args: argparse.Namespace) -> dict:
    """The sliding-window options of Predictor.predict from the command line (``--tile 0`` is refused there)."""
    return {"step": args.step, "tile": args.tile, "mirror": args.tta, "batch_size": args.batch, "force": args.force}


def _plane_weights(args: argparse.Namespace, one_volume: bool) -> list[float] | None:
    """--plane-weights as numbers (None: equal), once the options that go with --planes are checked: run
    before the backbone loads, so a wrong combination costs nothing."""
    from ..engine.errors import InputError

    if one_volume:
        raise InputError("--planes predicts a lone volume in one process: run it without torchrun")
    if args.uncertainty:  # instance heads: predict_planes refuses them
        raise InputError("--planes fuses the planes' class probabilities: --uncertainty is for one slice axis")
    if args.axis is not None:
        raise InputError("--axis picks one slice axis and --planes several: give one of them")
    try:
        return None if args.plane_weights is None else [float(w) for w in args.plane_weights.split(",")]
    except ValueError:
        raise InputError(
            f"--plane-weights {args.plane_weights}: give numbers separated by commas, e.g. 1,1,2"
        ) from None


def _volume_job(predictor, image, args: argparse.Namespace, weights: list[float] | None):
    """The tri-planar prediction of a 3D file (:func:`~..engine.volume.predict_planes`), returning a 1-tuple
    like Predictor.predict: probabilities (nc, *spatial) with --probabilities, else labels."""
    from ..engine.errors import InputError
    from ..engine.volume import parse_planes, predict_planes

    layout = image.layout
    if layout.slice is None:
        raise InputError("--planes is for 3D volumes and this image is 2D: predict it without --planes")
    job = predict_planes(
        predictor,
        image.data,
        spacing=image.spacing,
        planes=parse_planes(args.planes, z_axis=layout.slice_dim),
        weights=weights,
        channel_axis=layout.channel,
        probabilities=args.probabilities,
        **_tiling_options(args),
    )
    result = yield from job
    return (result[1],) if args.probabilities else (result,)


# InstanceParams field -> its option
_INSTANCE_OPTIONS = {
    "seed_threshold": "--seed-threshold",
    "foreground_threshold": "--foreground-threshold",
    "min_size": "--min-size",
}


def _outputs(predictor, args: argparse.Namespace, one_volume: bool) -> tuple[list, object]:
    """(the outputs to predict, a function from their result to the labels to write): class labels, or for
    instance heads objects (its watershed parameters from the options); with --probabilities, or when
    several processes share a volume (decoded once rank 0 has every slice), the maps."""
    from ..engine.errors import InputError
    from ..engine.instances import INSTANCES, InstanceMapsOutput, InstanceParams, Instances, generate
    from ..engine.outputs import Labels, Probabilities

    given = {field: getattr(args, field) for field in _INSTANCE_OPTIONS if getattr(args, field) is not None}
    if predictor.metadata.task != INSTANCES:
        if given:
            options = ", ".join(_INSTANCE_OPTIONS[field] for field in given)
            raise InputError(f"{options}: for instance heads only; {args.heads or args.model} holds semantic heads")
        if args.probabilities:
            return [Probabilities()], lambda probabilities: probabilities.argmax(axis=0)
        return [Labels()], lambda labels: labels
    params = InstanceParams(**given)
    if args.probabilities or one_volume:
        return [InstanceMapsOutput()], lambda maps: generate(maps, params)
    return [Instances(params)], lambda labels: labels


def _volume_share(image, layout) -> list[int]:
    """The slices of a lone input this process predicts when several share it (``torchrun -m
    napari_dinounet.predict``): every world-size-th from its rank on; a 2D image is rank 0's alone."""
    from ..engine.distributed import rank_and_world_size

    rank, world_size = rank_and_world_size()
    stack_size = 1 if layout.slice is None else image.data.shape[layout.slice]
    return list(range(stack_size))[rank::world_size]


def _gather_volume(result, layout, indices: list[int], per_class: bool):
    """Rank 0: its ``result`` completed with the other ranks' slices; other ranks: None."""
    import numpy as np

    from ..engine.distributed import gather_to_first

    axis = (0 if layout.slice_dim is None else layout.slice_dim) + per_class
    own = None if result is None else np.take(result, indices, axis=axis) if layout.slice is not None else result
    shares = gather_to_first((indices, own))
    if shares is None:
        return None
    for slice_indices, block in shares[1:]:
        if slice_indices:
            index = [slice(None)] * result.ndim
            index[axis] = slice_indices
            result[tuple(index)] = block
    return result


def _gather_result(result, layout, indices: list[int], per_class: bool):
    """:func:`_gather_volume` for any result (instance maps: their probabilities, classes first)."""
    from ..engine.instances import InstanceMaps

    if not isinstance(result, InstanceMaps):
        return _gather_volume(result, layout, indices, per_class)
    gathered = _gather_volume(result.probabilities, layout, indices, per_class=True)
    return None if gathered is None else InstanceMaps(gathered, result.slice_dim)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..engine.atomic import atomic_path
    from ..engine.distributed import rank_and_world_size, share_of
    from ..engine.errors import InputError
    from ..engine.instances import InstanceMaps
    from ..engine.io import find_images, probabilities_path, read_case, write_labels
    from ..engine.io.omezarr import at_level
    from ..engine.predictor import Predictor
    from ..engine.progress import run_with_bar
    from ..engine.uncertainty import Uncertainty
    from ._common import backbone_source

    cases = find_images(args.inputs)
    planned = _plan_outputs(cases, args.out, args)
    if not planned:
        print(f"nothing to do: every prediction is already in {args.out} (--skip-existing)")
        return 0
    # several processes (torchrun): a share of the files each, or of the slices of a lone volume
    one_volume = rank_and_world_size()[1] > 1 and len(planned) == 1
    planned = planned if one_volume else share_of(planned)
    plane_weights = _plane_weights(args, one_volume) if args.planes else None
    if args.model is not None:
        from ..engine.bioimageio import load_package

        predictor = load_package(args.model, device=args.device)
    else:
        predictor = Predictor.from_checkpoint(
            args.heads, backbone_source(args), device=args.device, allow_backbone_mismatch=args.allow_backbone_mismatch
        )
    outputs, labels_of = _outputs(predictor, args, one_volume)
    for number, (case, target) in enumerate(planned, start=1):
        try:
            image = read_case(case)
        except InputError as err:
            if number == 1:
                raise
            raise InputError(
                f"{err}. The {number - 1} predictions before it are written: fix or move this file, "
                "then rerun with --skip-existing to predict only the rest"
            ) from None
        if args.level:
            image = at_level(image, args.level)
        if args.channel_axis is not None:
            image = _with_channel_axis(image, args.channel_axis)
        try:  # the errors about this image name it
            layout = _layout(image, args.axis)
            if args.planes:
                job = _volume_job(predictor, image, args, plane_weights)
            else:
                slices = _volume_share(image, layout) if one_volume else None
                job = predictor.predict(
                    image.data,
                    channel_axis=layout.channel,
                    slice_axis=layout.slice_dim,
                    **_tiling_options(args),
                    outputs=outputs + ([Uncertainty()] if args.uncertainty else []),
                    slices=slices,
                )
            result, *uncertainty = run_with_bar(job, desc=f"[{number}/{len(planned)}] {case.name}", disable=args.quiet)
        except InputError as err:
            raise InputError(f"{case.name}: {err}") from None
        if one_volume:
            result = _gather_result(result, layout, slices, args.probabilities)
            uncertainty = [_gather_volume(u, layout, slices, False) for u in uncertainty]
            if result is None:  # rank 0 writes the volume
                continue
        write_labels(target, labels_of(result), like=image)
        print(f"{case.name}: {target}")
        if args.probabilities:
            probabilities = probabilities_path(target, case.name)
            with atomic_path(probabilities) as tmp:
                np.save(tmp, result.probabilities if isinstance(result, InstanceMaps) else result)
            print(f"{case.name}: {probabilities}")
        if uncertainty:
            _write_uncertainty(uncertainty_path(target, case.name), uncertainty[0])
            print(f"{case.name}: {uncertainty_path(target, case.name)}")
    return 0


def _write_uncertainty(path: Path, uncertainty) -> None:
    """The uncertainty map (*spatial) float32 as a TIFF, atomically."""
    import numpy as np
    import tifffile

    from ..engine.atomic import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(uncertainty, np.float32))
