"""``dinounet evaluate``: Dice and HD95 per class of predicted label files against ground truth.

Files are paired by case name (extensions and an nnU-Net ``_0000`` suffix ignored). Each image scores
the classes present in its prediction or ground truth (or ``--classes``), so a class absent from both
is left out of that image's scores and of the means. HD95 is in the ground truth's physical units
when every ground-truth file records a spacing, else in pixels. Empty-mask rules: engine/metrics.py.

``--instances``: both folders hold instance labels (0 background, one id per object); each image gets
its object counts, matches, precision, recall and F1 at IoU 0.5, the DSB 2018 AP over IoU 0.5:0.95 and
panoptic quality (engine/instance_metrics.py), next to the Dice of the foreground (every object as one
class).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HELP = "Dice and HD95 per class (or instance scores) of predicted label files against ground-truth label files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, metavar="DIR", help="folder of predicted label files")
    parser.add_argument("--gt", required=True, type=Path, metavar="DIR", help="folder of ground-truth label files")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write per-image and mean scores as JSON (an infinite HD95 is written as null)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        metavar="N",
        help="label values to score in every image (default: the non-zero values each image has)",
    )
    parser.add_argument("--pixels", action="store_true", help="HD95 in pixels even when the files record a spacing")
    parser.add_argument(
        "--instances",
        action="store_true",
        help="the files hold instance labels (one id per object): score objects (F1@0.5, AP@0.5:0.95 as in DSB "
        "2018, panoptic quality, counts) and the foreground Dice",
    )


def evaluate_folders(pred_dir: Path, gt_dir: Path, classes=None, pixels: bool = False):
    """Score every matched pair; a progress generator returning ``(per-case results, unit, values)``.

    per-case results: ``{case name: evaluate_pair result}``; unit: the HD95 unit ("px" for pixels);
    values: ``{"pred": set, "gt": set}`` of the non-zero label values found on each side.
    """
    import numpy as np

    from ..engine.errors import InputError
    from ..engine.io import match_cases, read_labels
    from ..engine.metrics import evaluate_pair
    from ..engine.progress import Progress

    pairs = match_cases(pred_dir, gt_dir)
    results, units, values = {}, {}, {"pred": set(), "gt": set()}
    for done, (name, pred_path, gt_path) in enumerate(pairs):
        yield Progress("evaluate", done, len(pairs), name)
        pred, gt = read_labels(pred_path), read_labels(gt_path)
        for side, labels in (("pred", pred), ("gt", gt)):
            values[side].update(int(v) for v in np.unique(labels.data) if v != 0)
        spacing = None if pixels else gt.spacing
        units[name] = "px" if spacing is None else (gt.unit or "spacing units")
        try:
            results[name] = evaluate_pair(pred.data, gt.data, spacing=spacing, classes=classes)
        except InputError as err:
            raise InputError(f"case {name!r} ({pred_path.name} vs {gt_path.name}): {err}") from err
    yield Progress("evaluate", len(pairs), len(pairs))
    found_units = sorted(set(units.values()))
    if len(found_units) > 1:
        examples = ", ".join(f"{next(n for n in units if units[n] == u)} ({u})" for u in found_units)
        raise InputError(
            f"the ground-truth files do not share one spacing unit ({examples}), so HD95 values "
            "cannot be averaged; rerun with --pixels"
        )
    return results, found_units[0], values


def value_mismatch_hint(values: dict[str, set[int]]) -> str | None:
    """A hint when predictions and ground truth use disjoint label values (e.g. 0/255 masks against 0/1)."""
    only_pred, only_gt = sorted(values["pred"] - values["gt"]), sorted(values["gt"] - values["pred"])
    if not (only_pred and only_gt):
        return None
    return (
        f"note: label values {only_pred} occur only in the predictions and {only_gt} only in the ground truth; "
        "if the two were saved with different values (e.g. 0/255 masks against 0/1), convert one and rerun"
    )


def check_json_target(path: Path) -> None:
    """Refuse a --json path that could destroy data (an image, a folder) and probe it before any scoring."""
    from ..engine.atomic import probe_writable
    from ..engine.errors import InputError

    if path.suffix.lower() != ".json":
        raise InputError(
            f"--json {path}: give a file name ending in .json; other names are refused so that an "
            "image or label file is never replaced by scores"
        )
    probe_writable(path)


def class_names_for(gt_dir: Path) -> dict[int, str]:
    """Class value -> name from the nnU-Net ``dataset.json`` beside a labelsTr folder, else empty."""
    from ..engine.io import label_values, read_dataset_json

    dataset_json = gt_dir.parent / "dataset.json"
    if not dataset_json.is_file():
        return {}
    return {value: name for name, value in label_values(read_dataset_json(dataset_json)).items()}


def format_table(results: dict, summary: dict, unit: str, names: dict[int, str]) -> str:
    """A plain-text table: one row per case and a mean row; Dice and HD95 columns per class."""
    classes = sorted(summary["dice"])
    header = ["case"]
    for c in classes:
        label = f"{c}:{names[c]}" if c in names else str(c)
        header += [f"Dice {label}", f"HD95 {label} ({unit})"]

    def cells(scores: dict) -> list[str]:
        row = []
        for c in classes:
            row.append(f"{scores['dice'][c]:.4f}" if c in scores["dice"] else "-")
            row.append(f"{scores['hd95'][c]:.2f}" if c in scores["hd95"] else "-")
        return row

    return aligned_table(
        header, [[name] + cells(scores) for name, scores in results.items()], ["mean"] + cells(summary)
    )


def aligned_table(header: list[str], rows: list[list[str]], last: list[str]) -> str:
    """Columns aligned (the first to the left, the rest to the right), rules under the header and above ``last``."""
    widths = [max(len(r[i]) for r in [header, *rows, last]) for i in range(len(header))]
    lines = [
        "  ".join(text.rjust(width) if i else text.ljust(width) for i, (text, width) in enumerate(zip(row, widths)))
        for row in [header, *rows, last]
    ]
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def report_dict(results: dict, summary: dict, unit: str, names: dict[int, str], pred_dir: Path, gt_dir: Path) -> dict:
    """What ``--json`` writes: class keys as strings, infinite or undefined numbers as null."""

    def scores(result: dict) -> dict:
        return {metric: {str(c): _json_number(v) for c, v in result[metric].items()} for metric in ("dice", "hd95")}

    return {
        "pred": str(pred_dir),
        "gt": str(gt_dir),
        "hd95_unit": unit,
        "class_names": {str(c): n for c, n in names.items()},
        "cases": {name: scores(result) for name, result in results.items()},
        "mean": {
            **scores(summary),
            "hd95_infinite": {str(c): n for c, n in summary["hd95_infinite"].items()},
            "images": {str(c): n for c, n in summary["images"].items()},
            "mean_dice": _json_number(summary["mean_dice"]),
            "mean_hd95": _json_number(summary["mean_hd95"]),
        },
    }


# instance scores (engine/instance_metrics.py keys) and their columns, in table order
INSTANCE_COLUMNS = {
    "pred_count": "objects",
    "gt_count": "true",
    "matched": "matched",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1@0.5",
    "ap": "AP@.5:.95",
    "pq": "PQ",
    "dice": "Dice fg",
}


def evaluate_instance_folders(pred_dir: Path, gt_dir: Path):
    """Instance scores and the foreground Dice of every matched pair; a progress generator returning
    ``{case name: scores}`` (:func:`~..engine.instance_metrics.evaluate_instances` plus ``dice``)."""
    from ..engine.errors import InputError
    from ..engine.instance_metrics import evaluate_instances
    from ..engine.io import match_cases, read_labels
    from ..engine.metrics import binary_dice
    from ..engine.progress import Progress

    pairs = match_cases(pred_dir, gt_dir)
    results = {}
    for done, (name, pred_path, gt_path) in enumerate(pairs):
        yield Progress("evaluate", done, len(pairs), name)
        pred, gt = read_labels(pred_path).data, read_labels(gt_path).data
        try:
            scores = evaluate_instances(pred, gt)
        except InputError as err:
            raise InputError(f"case {name!r} ({pred_path.name} vs {gt_path.name}): {err}") from err
        results[name] = {**scores, "dice": binary_dice(pred > 0, gt > 0)}
    yield Progress("evaluate", len(pairs), len(pairs))
    return results


def format_instance_table(results: dict, mean: dict) -> str:
    """A plain-text table: one row per case and a mean row (counts summed), a column per score."""
    header = ["case", *INSTANCE_COLUMNS.values()]

    def cells(scores: dict) -> list[str]:
        return [str(scores[k]) if isinstance(scores[k], int) else f"{scores[k]:.4f}" for k in INSTANCE_COLUMNS]

    return aligned_table(header, [[name, *cells(scores)] for name, scores in results.items()], ["mean", *cells(mean)])


def run_instances(args: argparse.Namespace) -> int:
    from ..engine.atomic import atomic_path
    from ..engine.errors import InputError
    from ..engine.instance_metrics import mean_instance_scores
    from ..engine.progress import run_with_bar

    if args.classes is not None or args.pixels:
        raise InputError("--classes and --pixels are for class labels; --instances scores objects, not classes")
    if args.json is not None:
        check_json_target(args.json)
    results = run_with_bar(evaluate_instance_folders(args.pred, args.gt))
    mean = mean_instance_scores(list(results.values()))
    print(format_instance_table(results, mean))
    print("mean: scores averaged over images; objects, true and matched summed")
    if args.json is not None:
        report = {"pred": str(args.pred), "gt": str(args.gt), "instances": True, "cases": results, "mean": mean}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"scores written to {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.instances:
        return run_instances(args)
    from ..engine.atomic import atomic_path
    from ..engine.metrics import mean_scores
    from ..engine.progress import run_with_bar

    if args.json is not None:
        check_json_target(args.json)
    results, unit, values = run_with_bar(evaluate_folders(args.pred, args.gt, args.classes, args.pixels))
    summary = mean_scores(list(results.values()))
    names = class_names_for(args.gt)
    if not summary["dice"]:
        print(
            f"nothing was scored: the {len(results)} predictions and their ground truth hold only background "
            "(0); give --classes N to score class N anyway"
        )
    else:
        print(format_table(results, summary, unit, names))
    hint = value_mismatch_hint(values)
    if hint:
        print(hint)
    infinite = {c: n for c, n in summary["hd95_infinite"].items() if n}
    if infinite:
        counts = ", ".join(f"class {c}: {n}" for c, n in infinite.items())
        print(f"HD95 inf: one of the two masks is empty ({counts}); the HD95 means leave those images out.")
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report_dict(results, summary, unit, names, args.pred, args.gt), indent=2))
        print(f"scores written to {args.json}")
    return 0
