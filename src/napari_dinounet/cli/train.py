"""``dinounet train``: train Dino U-Net heads on an nnU-Net dataset or on folders of images and labels.

The same arguments drive ``torchrun --nproc_per_node N -m napari_dinounet.train`` (several GPUs, DDP).
Stopping (Ctrl-C) keeps the last epoch's checkpoint; ``--resume`` continues the run from it.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from ..engine.names import PROJECTIONS
from ._common import BACKBONE_ENV, backbone_source, signal_handler

HELP = "train the heads (adapter, projection, decoder) on labelled images; resumable"

# command-line option -> TrainSettings field; options left out keep the TrainSettings default
_SETTINGS = {
    "size": "size",
    "projection": "projection",
    "patch": "patch_size",
    "batch": "batch_size",
    "epochs": "epochs",
    "iters_per_epoch": "iters_per_epoch",
    "lr": "lr",
    "val_fraction": "val_fraction",
    "cache_features": "cache_features",
    "seed": "seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        metavar="SOURCE",
        help=f"DINOv3 weights (Meta .pth, Hugging Face folder, timm file) or random:<variant>; "
        f"default: the {BACKBONE_ENV} environment variable",
    )
    data = parser.add_argument_group("training data (one of)")
    data.add_argument(
        "--dataset", metavar="NNUNET_DIR", help="an nnU-Net raw dataset (dataset.json, imagesTr, labelsTr)"
    )
    data.add_argument("--images", metavar="DIR", help="a folder of images (with --labels; pairs matched by file name)")
    data.add_argument("--labels", metavar="DIR", help="a folder of label images, class indices 0..nc-1")
    parser.add_argument(
        "--classes",
        type=int,
        metavar="N",
        help="number of classes including background, for --images/--labels when some classes are "
        "absent from the label files; default: the label values 0..k present",
    )
    parser.add_argument(
        "--instances",
        action="store_true",
        help="the --labels files hold instance ids (0 background, one id per object): train instance heads "
        "(background / interior / boundary classes, decoded into objects when predicting); with --sparse: "
        "0 not painted, --background-label B painted background, other values objects painted whole",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="the --labels are scribbles: 0 = not painted (ignored by the loss), --background-label B = "
        "background, other values their class; validation then scores the painted pixels only",
    )
    parser.add_argument(
        "--background-label",
        type=int,
        metavar="B",
        help="with --sparse: the label value background was painted with (it becomes class 0)",
    )
    parser.add_argument("--out", required=True, metavar="CKPT", help="the heads checkpoint to write (.safetensors)")
    keep = argparse.SUPPRESS  # absent options are not set, so TrainSettings' defaults (the paper's) apply
    parser.add_argument("--size", default=keep, help="heads size (s, b, l, 7b, tiny ...); default: the backbone's")
    parser.add_argument("--projection", default=keep, choices=PROJECTIONS, help="default fapm")
    parser.add_argument("--patch", type=int, default=keep, help="patch size in pixels, a multiple of 32; default 512")
    parser.add_argument("--batch", type=int, default=keep, help="patches per step (per GPU with torchrun); default 2")
    parser.add_argument("--epochs", type=int, default=keep, help="default 200")
    parser.add_argument("--iters-per-epoch", type=int, default=keep, help="optimiser steps per epoch; default 250")
    parser.add_argument("--lr", type=float, default=keep, help="initial learning rate of Adam; default 1e-3")
    parser.add_argument("--val-fraction", type=float, default=keep, help="share of images held out; default 0.2")
    parser.add_argument("--seed", type=int, default=keep, help="default 0")
    parser.add_argument(
        "--cache-features",
        action="store_true",
        default=keep,
        help="compute the frozen backbone's features once for fixed crops (fast fine-tuning; mirroring and "
        "intensity augmentation only)",
    )
    parser.add_argument(
        "--normalization",
        default="zscore",
        choices=("zscore", "rgb", "ct"),
        help="intensity normalisation, stored in the checkpoint; default zscore. ct: nnU-Net's CT scheme, clip "
        "to the 0.5-99.5 percentiles of the labelled foreground of the training images, then z-score with "
        "its mean and std (fitted on the training data, single-channel images)",
    )
    parser.add_argument(
        "--planes",
        metavar="PLANES",
        help="for 3D training images: cut 2D slices along these planes instead of the file's z only: 'all', "
        "names (axial,coronal,sagittal; z, y, x of the file) or spatial axes (0,2); each plane is resampled "
        "in-plane to the finest voxel spacing; the heads record the planes and spacing",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu; default auto")
    parser.add_argument("--resume", action="store_true", help="continue the run that wrote --out")
    parser.add_argument("--overwrite", action="store_true", help="start a new run even if --out exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _training_pairs(args: argparse.Namespace) -> list[tuple]:
    """(image case, label file) of every training pair of --dataset or --images/--labels, checked."""
    from ..engine import data, io
    from ..engine.errors import InputError

    if args.dataset and (args.images or args.labels):
        raise InputError("give either --dataset or --images with --labels, not both")
    if args.dataset:
        return io.read_nnunet_dataset(args.dataset).training
    if args.images and args.labels:
        return [(case, labels) for _, case, labels in data.folder_pairs(args.images, args.labels)]
    raise InputError("no training data: pass --dataset NNUNET_DIR, or --images DIR and --labels DIR")


def training_normalization(args: argparse.Namespace):
    """The Normalization of --normalization; ``ct`` fitted on the training pairs (one image at a time)."""
    from ..engine import io
    from ..engine.errors import InputError
    from ..engine.normalize import Normalization, fit_ct

    if args.normalization != "ct":
        return Normalization(args.normalization)
    pairs = _training_pairs(args)

    def images():
        for case, _ in pairs:
            image = io.read_case(case)
            if image.channel_axis is not None:
                raise InputError(
                    f"{case.name}: --normalization ct is for single-channel images (CT), this one has channels"
                )
            yield image.data

    return fit_ct(images(), (io.read_labels(path).data for _, path in pairs))


def volume_record(args: argparse.Namespace) -> tuple[tuple[float, ...] | None, tuple[int, ...] | None]:
    """(spacing, planes) for the heads of a --planes run: the planes as spatial axes of the training files
    (names read with the first file's z axis), the spacing when every label file records the same one."""
    from ..engine import io
    from ..engine.volume import parse_planes

    if not args.planes:
        return None, None
    labels = [io.read_labels(path) for _, path in _training_pairs(args)]
    volumes = [lab for lab in labels if lab.data.ndim == 3]
    z_axis = volumes[0].layout.slice_dim if volumes else 0
    spacings = {lab.spacing for lab in volumes}
    return (spacings.pop() if len(spacings) == 1 else None), parse_planes(args.planes, z_axis=z_axis)


def load_training_data(args: argparse.Namespace, normalization) -> tuple[list, list[str] | None]:
    """(samples, class names or None) from --dataset (names from dataset.json, by value) or --images/--labels
    (with --classes N: N unnamed classes; without: None, the classes are the label values present);
    3D images cut along --planes when given."""
    from ..engine import data, io
    from ..engine.errors import InputError

    if args.dataset and (args.images or args.labels):
        raise InputError("give either --dataset or --images with --labels, not both")
    planes = getattr(args, "planes", None)
    sparse, background = getattr(args, "sparse", False), getattr(args, "background_label", None)
    if sparse != (background is not None):
        raise InputError(
            "--sparse and --background-label B go together: scribbles need the value background was painted with"
        )
    if sparse and args.dataset:
        raise InputError(
            "--sparse is for --images/--labels scribbles; an nnU-Net dataset marks unlabelled pixels "
            "with its 'ignore' label"
        )
    if getattr(args, "instances", False):  # callers may build args without it
        return _instance_data(args, normalization)
    if args.dataset:
        if args.classes is not None:
            raise InputError(
                "--classes is for --images/--labels: an nnU-Net dataset's classes are the labels in its dataset.json"
            )
        samples, info = data.samples_from_nnunet(args.dataset, normalization=normalization, planes=planes)
        return samples, io.class_names(info)
    if args.images and args.labels:
        samples = data.samples_from_folders(
            args.images,
            args.labels,
            normalization=normalization,
            num_classes=args.classes,
            sparse_background=background,
            planes=planes,
        )
        return samples, None if args.classes is None else data.default_class_names(args.classes)
    raise InputError("no training data: pass --dataset NNUNET_DIR, or --images DIR and --labels DIR")


def _instance_data(args: argparse.Namespace, normalization) -> tuple[list, list[str]]:
    """(samples, the instance class names) for ``--instances``: instance ids from --images/--labels."""
    from ..engine import data
    from ..engine.errors import InputError
    from ..engine.instances import INSTANCE_CLASS_NAMES

    if args.dataset or not (args.images and args.labels):
        raise InputError("--instances trains from --images DIR and --labels DIR (instance id files), not --dataset")
    if args.classes is not None:
        raise InputError("--classes does not go with --instances: instance heads have their own 3 classes")
    samples = data.samples_from_folders(
        args.images,
        args.labels,
        normalization=normalization,
        num_classes=len(INSTANCE_CLASS_NAMES),
        sparse_background=getattr(args, "background_label", None),
        instances=True,
    )
    return samples, list(INSTANCE_CLASS_NAMES)


def _modified(path) -> int | None:
    """The file's modification time in ns, None when it does not exist: tells whether this run wrote it."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def first_interrupt_stops(stop: threading.Event, rank: int):
    """While the body runs, the first Ctrl-C asks the run to stop after the current step and save its heads
    (``train(stop=...)``); a second one interrupts at once (KeyboardInterrupt: the last save stays)."""
    import sys

    def interrupt(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if rank == 0:
            print(
                "\ndinounet train: stopping after this step and saving its heads (Ctrl-C again to quit at once)",
                file=sys.stderr,
            )

    return signal_handler(signal.SIGINT, interrupt)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from ..engine.checkpoint import read_metadata
    from ..engine.names import INSTANCES, SEMANTIC
    from ..engine.progress import run_with_bar
    from ..engine.train import TrainSettings, state_path, train

    settings = TrainSettings(**{field: getattr(args, opt) for opt, field in _SETTINGS.items() if hasattr(args, opt)})
    source = backbone_source(args)
    if not str(args.out).endswith(".safetensors"):
        print(
            f"note: {args.out} does not end in .safetensors, the format heads checkpoints are written in",
            file=sys.stderr,
        )
    normalization = training_normalization(args)
    spacing, planes = volume_record(args)
    samples, class_names = load_training_data(args, normalization)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    state_before, out_before = _modified(state_path(args.out)), _modified(args.out)
    stop = threading.Event()
    run = train(
        samples,
        out=args.out,
        backbone=source,
        settings=settings,
        class_names=class_names,
        normalization=normalization,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        stop=stop,
        task=INSTANCES if args.instances else SEMANTIC,
        spacing=spacing,
        planes=planes,
    )
    try:
        with first_interrupt_stops(stop, rank):
            out = run_with_bar(run, desc="train", disable=args.quiet or rank != 0)
    except KeyboardInterrupt:
        if rank == 0:
            # resumable only from what this run saved, or from the state it resumed (not an older run's)
            state_now = _modified(state_path(args.out))
            saved = state_now is not None and (args.resume or state_now != state_before)
            print(
                f"stopped: the last finished epoch is saved in {state_path(args.out)}; continue with the same "
                "command plus --resume"
                if saved
                else "stopped before the first epoch ended: nothing was saved"
            )
        raise
    if rank == 0 and stop.is_set() and _modified(out) == out_before:
        print("stopped before the first step: nothing was trained or saved")
    elif rank == 0:
        history = read_metadata(out).training.get("history") or [{}]
        val_dice = history[-1].get("val_dice")
        shown = "no validation images" if val_dice is None else f"validation Dice {val_dice:.4f}"
        if history[-1].get("val_scope") == "painted":
            shown += " on the painted pixels only"
        if stop.is_set() and _modified(out) != out_before:
            step = history[-1].get("step")
            print(f"stopped at step {step}: wrote {out} ({shown}); continue with the same command plus --resume")
        elif args.resume and _modified(out) == out_before:
            print(f"nothing to do: the run in {out} had already finished (epoch {history[-1].get('epoch')}, {shown})")
        else:
            print(f"wrote {out} (epoch {history[-1].get('epoch')}, {shown})")
    return 0
