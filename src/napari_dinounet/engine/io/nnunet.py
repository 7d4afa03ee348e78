"""nnU-Net raw datasets: ``dataset.json``, and cases of one file per channel.

A dataset (v2 ``dataset.json`` with ``channel_names``/``labels``/``file_ending``, or v1 with
``modality``/``labels``) holds images ``imagesTr/<case>_<0000..>`` one file per channel, labels
``labelsTr/<case>``, test images ``imagesTs/<case>_<0000..>``. A :class:`Case` groups a case's channel
files; :func:`read_case` stacks them channels-last.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..values import is_number
from .formats import format_of, split_extension
from .images import ImageFile, read_image

NNUNET_IMAGE_FOLDERS = ("imagesTr", "imagesTs")  # where file names end in a _0000 channel suffix
IGNORE_LABEL = "ignore"  # nnU-Net's label for unlabelled pixels (left out of the loss); it takes the highest value
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One image to process: a single file, or an nnU-Net case with one file per channel.

    name: the case name, used for output files and for matching predictions to ground truth
      (the file name without its extension, and for nnU-Net without the ``_0000`` channel suffix).
    paths: the channel files in channel order (one path for an ordinary image).
    """

    name: str
    paths: tuple[Path, ...]

    @property
    def extension(self) -> str:
        return split_extension(self.paths[0])[1]

    @property
    def format(self) -> str:
        return format_of(self.paths[0])

    @classmethod
    def from_path(cls, path: str | Path) -> Case:
        """A one-file case; in an nnU-Net images folder its name drops the ``_0000`` channel suffix."""
        path = Path(path)
        name = split_extension(path)[0]
        match = _CHANNEL_SUFFIX.match(name)
        if match is not None and path.parent.name in NNUNET_IMAGE_FOLDERS:
            name = match["case"]
        return cls(name, (path,))


@dataclass
class NnUNetDataset:
    """An nnU-Net raw dataset folder as described by its ``dataset.json``.

    channel_names: channel index -> name (v2 ``channel_names``, v1 ``modality``).
    labels: class name -> label value (background included).
    training: (image case, label file) pairs from imagesTr/labelsTr; test: cases in imagesTs.
    """

    root: Path
    info: dict[str, Any]
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    training: list[tuple[Case, Path]]
    test: list[Case]


def read_case(case: Case | Sequence[str | Path]) -> ImageFile:
    """Read a case; several channel files (nnU-Net ``_0000``, ``_0001``...) are stacked channels-last.

    The result's spacing, affine and metadata are the first channel's, ``channel_axis`` is the last axis
    for a stacked case; all channel files must have the same shape.
    """
    paths = case.paths if isinstance(case, Case) else tuple(Path(p) for p in case)
    first = read_image(paths[0])
    if len(paths) == 1:
        return first
    channels = [first] + [read_image(p) for p in paths[1:]]
    for image in channels:
        if image.channel_axis is not None or image.data.shape != first.data.shape:
            raise InputError(
                f"{image.path.name}: shape {image.data.shape} does not match {first.path.name} "
                f"{first.data.shape}; every channel file of a case must hold one channel of the same size"
            )
    data = np.stack([image.data for image in channels], axis=-1)
    return ImageFile(
        data,
        first.format,
        path=first.path,
        spacing=first.spacing,
        unit=first.unit,
        affine=first.affine,
        channel_axis=data.ndim - 1,
        metadata=first.metadata,
    )


def group_channels(files: Iterable[Path], n_channels: int | None = None) -> list[Case]:
    """Group nnU-Net image files ``<case>_<0000..>.<ext>`` into cases, channels in order.

    Every case must have channels 0..n-1 (n from ``dataset.json`` when given, else the same for all).
    """
    grouped: dict[str, dict[int, Path]] = {}
    for path in files:
        stem, extension = split_extension(path)
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:  # a prediction written into imagesTs lacks the suffix too: renaming it would be wrong
            raise InputError(
                f"{path}: nnU-Net image names end with a channel suffix (_0000, _0001, ...); "
                f"rename it, e.g. to {stem}_0000{extension}, unless it is a prediction written into "
                f"{path.parent.name} by mistake: then move it out"
            )
        grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    expected = n_channels if n_channels is not None else max(len(ch) for ch in grouped.values())
    cases = []
    for name, channels in sorted(grouped.items()):
        if sorted(channels) != list(range(expected)):
            have = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise InputError(f"nnU-Net case {name!r} has channels {have}; expected _0000 to _{expected - 1:04d}")
        cases.append(Case(name, tuple(channels[c] for c in range(expected))))
    return cases


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """An nnU-Net ``dataset.json`` as a dict, checked to have channel names and labels that follow nnU-Net's
    rules (:func:`label_values`); errors name the file."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read it as JSON ({err}); fix or regenerate dataset.json") from err
    if not isinstance(info, dict) or "labels" not in info or not ("channel_names" in info or "modality" in info):
        raise InputError(f"{path}: not an nnU-Net dataset.json (needs 'channel_names' or 'modality', and 'labels')")
    try:
        _channel_names(info), label_values(info)
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(
            f"{path}: 'channel_names'/'modality' must map channel numbers to names and 'labels' "
            f"class names to values ({err})"
        ) from err
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    return info


def _channel_names(info: dict[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in (info.get("channel_names") or info["modality"]).items()}


def label_values(info: dict[str, Any]) -> dict[str, int]:
    """Class name -> label value from a ``dataset.json`` (v2 ``{"name": value}`` or v1 ``{"value": "name"}``),
    ordered by value.

    The values must follow nnU-Net's rules: whole numbers, "background" at 0, one value per name, values
    0, 1, 2, ... without gaps, an "ignore" label (:data:`IGNORE_LABEL`) only at the highest value. Anything
    else is an InputError saying which rule (the caller names the file: :func:`read_dataset_json`).
    """
    labels = info["labels"]
    if all(str(k).isdigit() for k in labels):  # v1: {"0": "background", "1": "tumour"}
        pairs = [(str(name), int(value)) for value, name in labels.items()]
    else:
        pairs = [(str(name), _label_value(name, value)) for name, value in labels.items()]
    pairs.sort(key=lambda pair: pair[1])
    values = [value for _, value in pairs]
    negative = next((pair for pair in pairs if pair[1] < 0), None)
    if negative is not None:
        raise InputError(
            f"label {negative[0]!r} has the value {negative[1]}: label values are 0 (background), "
            f"1, 2, ... ('{IGNORE_LABEL}' takes the highest value, not a negative one)"
        )
    shared = next((i for i in range(1, len(pairs)) if values[i] == values[i - 1]), None)
    if shared is not None:
        raise InputError(
            f"labels {pairs[shared - 1][0]!r} and {pairs[shared][0]!r} share the value {values[shared]}: "
            "give each class its own value"
        )
    if not values or values[0] != 0:
        raise InputError("'labels' lacks \"background\": 0 (nnU-Net's value for pixels of no class): add it")
    if values != list(range(len(values))):
        missing = sorted(set(range(values[-1])) - set(values))
        raise InputError(
            f"label values {', '.join(map(str, values))} skip {', '.join(map(str, missing))}: nnU-Net "
            "needs values 0, 1, 2, ... without gaps; renumber the classes (and the label files to match)"
        )
    ignore = dict(pairs).get(IGNORE_LABEL)
    if ignore is not None and ignore != values[-1]:
        raise InputError(
            f"'{IGNORE_LABEL}' has the value {ignore}, but nnU-Net gives it the highest value: "
            f"swap it with {pairs[-1][0]!r} ({values[-1]}), here and in the label files"
        )
    if len(values) - (ignore is not None) < 2:
        raise InputError("'labels' names no class besides background: add the classes to segment, e.g. \"nuclei\": 1")
    return dict(pairs)


def _label_value(name: str, value: Any) -> int:
    """One v2 label value, or an InputError saying what is wrong with it."""
    if is_number(value, numbers.Integral):
        return value
    if isinstance(value, (list, tuple)):
        raise InputError(
            f"label {name!r} is a list of values {value}: region-based labels are not supported; "
            "use one value per class"
        )
    if isinstance(value, str):
        kind = "text in quotes"
    elif isinstance(value, float):
        kind = "written with a decimal point" if value.is_integer() else "not a whole number"
    else:
        kind = "not a number"
    raise InputError(
        f"label {name!r} has the value {json.dumps(value)}, {kind}: label values are whole numbers "
        "(0 for background, 1, 2, ...) written without quotes"
    )


def class_names(info: dict[str, Any]) -> list[str]:
    """The classes a network learns from a ``dataset.json``: its label names ordered by value, "ignore" left out."""
    return [name for name in label_values(info) if name != IGNORE_LABEL]


def read_nnunet_dataset(root: str | Path) -> NnUNetDataset:
    """Read an nnU-Net raw dataset folder: ``dataset.json``, ``imagesTr``/``labelsTr`` and ``imagesTs``.

    Every training case needs a label ``labelsTr/<case><file_ending>`` and every label an image.
    """
    root = Path(root)
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        raise InputError(
            f"{root}: no dataset.json; an nnU-Net raw dataset folder holds dataset.json, imagesTr and labelsTr"
        )
    info = read_dataset_json(dataset_json)
    channel_names = _channel_names(info)
    file_ending = str(info.get("file_ending", ".nii.gz"))
    if not file_ending.startswith("."):
        raise InputError(
            f'{dataset_json}: "file_ending": {json.dumps(file_ending)} lacks the dot of an '
            f'extension; write "file_ending": ".{file_ending}"'
        )
    format_of(f"case{file_ending}")  # a file ending we cannot read fails here, naming the supported ones
    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    for folder in (images_tr, labels_tr):
        if not folder.is_dir():
            raise InputError(f"{root}: no {folder.name} folder; an nnU-Net raw dataset needs imagesTr and labelsTr")

    def files_in(folder: Path) -> list[Path]:
        return [
            p
            for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")
        ]

    def cases_in(folder: Path) -> list[Case]:
        files = files_in(folder)
        return group_channels(files, len(channel_names)) if files else []

    training_cases = cases_in(images_tr)
    if not training_cases:
        raise InputError(f"{images_tr}: no images ending in {file_ending}")
    label_files = {p.name[: -len(file_ending)]: p for p in files_in(labels_tr)}
    missing = [c.name for c in training_cases if c.name not in label_files]
    orphans = sorted(set(label_files) - {c.name for c in training_cases})
    if missing:
        raise InputError(
            f"{root}: no label in labelsTr for {_some(missing)}; add {missing[0]}{file_ending} to labelsTr"
        )
    if orphans:
        raise InputError(
            f"{root}: labels without images in imagesTr: {_some(orphans)}; add the images or remove the labels"
        )
    test = cases_in(root / "imagesTs") if (root / "imagesTs").is_dir() else []
    return NnUNetDataset(
        root,
        info,
        channel_names,
        label_values(info),
        file_ending,
        [(case, label_files[case.name]) for case in training_cases],
        test,
    )


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
