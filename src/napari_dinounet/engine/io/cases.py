"""Which files to process and where their results go: inputs to cases, predictions paired with ground
truth, output and probability file names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from .formats import format_of, get_format, is_store, is_supported, split_extension, supported
from .nnunet import NNUNET_IMAGE_FOLDERS, Case, _channel_names, _some, group_channels, read_dataset_json

PROBABILITIES_SUFFIX = "_probabilities.npy"


def find_images(inputs: Iterable[str | Path]) -> list[Case]:
    """The cases to process from files and folders.

    A file is one case. A folder gives every supported file in it (not recursive, hidden files skipped),
    except nnU-Net folders: an nnU-Net dataset root (holding ``dataset.json``) means its ``imagesTs``,
    and a folder named ``imagesTr``/``imagesTs`` is grouped by case with channels from the ``_0000``,
    ``_0001``... suffixes (as many as its ``dataset.json`` names, if there is one). Case names must be
    unique, since they name the outputs. Raises InputError for missing paths, unsupported files and
    empty folders.
    """
    cases: list[Case] = []
    for item in inputs:
        path = Path(item)
        if path.is_file() or is_store(path):
            format_of(path)
            cases.append(Case.from_path(path))
        elif path.is_dir():
            cases.extend(_cases_in_folder(path))
        else:
            raise InputError(f"{path}: no such file or folder; check the path")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(
                f"two inputs share the case name {case.name!r} ({seen[case.name].paths[0]} and "
                f"{case.paths[0]}); their outputs would overwrite each other: rename one"
            )
        seen[case.name] = case
    return cases


def _cases_in_folder(folder: Path) -> list[Case]:
    if (folder / "dataset.json").is_file():
        if not (folder / "imagesTs").is_dir():
            raise InputError(
                f"{folder} is an nnU-Net dataset without imagesTs; pass {folder / 'imagesTr'} "
                "to process its training images"
            )
        return _cases_in_folder(folder / "imagesTs")
    files = sorted(p for p in folder.iterdir() if (p.is_file() or is_store(p)) and is_supported(p))
    if not files:
        raise InputError(f"{folder}: no images found (supported: {supported()})")
    if folder.name in NNUNET_IMAGE_FOLDERS:
        dataset_json = folder.parent / "dataset.json"
        channels = _channel_names(read_dataset_json(dataset_json)) if dataset_json.is_file() else None
        return group_channels(files, len(channels) if channels else None)
    return [Case.from_path(p) for p in files]


def evaluation_name(path: str | Path) -> str:
    """The case name used to pair predictions with ground truth: no extension, no ``_0000`` suffix."""
    stem = split_extension(path)[0]
    return stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair the supported files of two folders by case name: ``[(name, prediction, ground truth)]``.

    Names ignore extensions and an nnU-Net ``_0000`` suffix; the class probabilities that prediction
    writes beside its labels (:func:`probabilities_path`) are not label files and are left out.
    Raises InputError when a folder is missing or empty, two files in one folder share a name, or a file
    has no partner (listing them).
    """
    found = []
    for folder in (Path(pred_dir), Path(gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder; check the path")
        by_name: dict[str, Path] = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file() and is_supported(p)):
            if path.name.endswith(PROBABILITIES_SUFFIX):
                continue
            name = evaluation_name(path)
            if name in by_name:
                raise InputError(f"{folder}: {by_name[name].name} and {path.name} are the same case {name!r}; keep one")
            by_name[name] = path
        if not by_name:
            raise InputError(f"{folder}: no image files (supported: {supported()})")
        found.append(by_name)
    preds, gts = found
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        problems = []
        if only_pred:
            problems.append(f"predictions without ground truth: {_some(only_pred)}")
        if only_gt:
            problems.append(f"ground truth without prediction: {_some(only_gt)}")
        raise InputError(
            "; ".join(problems) + " (files are paired by name, ignoring extensions and _0000); "
            "add the missing files or move the extra ones out"
        )
    return [(name, preds[name], gts[name]) for name in sorted(preds)]


def probabilities_path(labels_path: str | Path, case_name: str) -> Path:
    """Where a case's class probabilities go beside its labels: ``<case>_probabilities.npy``."""
    return Path(labels_path).with_name(case_name + PROBABILITIES_SUFFIX)


def output_path_for(source: Case | str | Path, out_dir: str | Path) -> Path:
    """Where the prediction for ``source`` goes: ``out_dir/<case name><input extension>``.

    nnU-Net cases (a :class:`Case`, or a path in imagesTr/imagesTs) are named without ``_0000``;
    other files keep their name and extension, except that images of a format that holds no labels get the
    format its record names (``labels_as``: JPEG inputs get ``.png``, since JPEG compression would change
    label values).
    """
    case = source if isinstance(source, Case) else Case.from_path(source)
    labels_as = get_format(case.format).labels_as
    extension = case.extension if labels_as is None else get_format(labels_as).extension
    return Path(out_dir) / f"{case.name}{extension}"
