"""Label efficiency of the correction loop: a simulated user, guided by "correct here next" or at random.

    python benchmarks/label_efficiency.py [--quick]

Two real data sets with ground truth (bundled): the nuclei image (train on its left half, score on its
right half) and the MNI152 slices (train on some slices, score on others). The simulated user starts from
a few strokes drawn from the ground truth (:func:`engine.sparse.simulated_scribbles`, ~1 % of the training
pixels) and trains fresh tiny heads on them (sparse labels). Then, each round, the ground truth is revealed
in ``m`` tiles, chosen

  (a) guided: the best tiles of :func:`engine.next_regions.next_regions` on the current heads' uncertainty
      (:class:`engine.uncertainty.Uncertainty`) of the training image, already revealed pixels left out;
  (b) random: tiles drawn uniformly among those not yet fully revealed,

and the heads are fine-tuned ``K`` steps from the previous round's (sparse labels: strokes + revealed tiles;
learning rate 1e-3, the fresh heads' 4e-3). Guided uncertainty is predicted with mirror TTA.
After every round the Dice (mean over the foreground classes) on the scoring part is recorded against the
share of training pixels labelled. A full-label run (every training pixel labelled, the same total steps)
gives the reference Dice. Curves are the mean of ``--seeds`` runs (strokes, heads, patches and random
tiles differ by seed; both strategies of a seed start from the same round 0). Goal (issue 12): the
guided curve reaches 95 % of the full-label Dice with at most half the labelled pixels random needs.

Backbone ``random:tiny`` (no DINOv3 weights on this machine): absolute Dice values are far below a real
backbone's; the comparison between the curves is the point. Writes a table to stdout, JSON to
benchmarks/results/label_efficiency[_quick].json and a PNG of the curves beside it (matplotlib: the
``benchmarks`` extra).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BACKGROUND = 255  # the value background is painted with in the simulated scribbles (becomes class 0)


@dataclass
class Task:
    """One data set: training image and ground truth, scoring image and ground truth, (Z, H, W) each."""

    name: str
    train_image: np.ndarray
    train_truth: np.ndarray
    test_image: np.ndarray
    test_truth: np.ndarray
    num_classes: int


def nuclei_task() -> Task:
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    truth = (instances > 0).astype(np.int64)
    return Task("nuclei", image[None, :, :256], truth[None, :, :256], image[None, :, 256:], truth[None, :, 256:], 2)


def mni_task(train_slices, test_slices) -> Task:
    from napari_dinounet.engine.bundled_data import load_mni152_slices

    mni = load_mni152_slices()
    labels = mni.labels.astype(np.int64)
    return Task(
        "mni152",
        mni.image[train_slices],
        labels[train_slices],
        mni.image[test_slices],
        labels[test_slices],
        len(mni.class_names),
    )


def mean_dice(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    from napari_dinounet.engine.metrics import dice

    return float(np.mean(list(dice(predicted, truth, range(1, num_classes)).values())))


class User:
    """A simulated user on one task: the labels painted so far ((Z, H, W) scribble values, 0 = unknown) and
    the heads trained on them."""

    def __init__(self, task: Task, backbone, args, workdir: Path, seed: int):
        from napari_dinounet.engine.sparse import simulated_scribbles

        self.task, self.backbone, self.args, self.workdir = task, backbone, args, workdir
        self.painted = np.stack(
            [
                simulated_scribbles(truth, BACKGROUND, coverage=args.stroke_coverage, seed=100 * seed + z)
                for z, truth in enumerate(task.train_truth)
            ]
        )
        self.model = None
        self.round = 0
        self.seed = seed

    @property
    def labelled_fraction(self) -> float:
        return float(np.mean(self.painted != 0))

    def train(self, steps: int) -> None:
        """Fine-tune (first call: fresh heads) ``steps`` steps on the labels painted so far."""
        from napari_dinounet.engine.checkpoint import load_heads
        from napari_dinounet.engine.data import samples_from_arrays
        from napari_dinounet.engine.progress import drain
        from napari_dinounet.engine.train import TrainSettings, train

        samples = samples_from_arrays(
            [self.task.train_image],
            [self.painted],
            sparse_background=BACKGROUND,
            num_classes=self.task.num_classes,
        )
        # fresh heads learn at lr, fine-tuning goes on at the lower fine_lr (restarting at lr each round undid rounds)
        lr = self.args.lr if self.model is None else self.args.fine_lr
        settings = TrainSettings(
            size="tiny",
            patch_size=64,
            batch_size=4,
            epochs=1,
            iters_per_epoch=steps,
            lr=lr,
            seed=1000 * self.seed + self.round,
        )
        out = self.workdir / f"round{self.round}.safetensors"
        drain(train(samples, validation=[], out=out, backbone=self.backbone, settings=settings, model=self.model))
        self.model, self.metadata = load_heads(out, self.backbone)
        self.round += 1

    def predictor(self):
        from napari_dinounet.engine.predictor import Predictor

        return Predictor(self.model, self.metadata)

    def score(self) -> float:
        from napari_dinounet.engine.progress import drain

        (labels,) = drain(self.predictor().predict(self.task.test_image, tile=128))
        return mean_dice(labels, self.task.test_truth, self.task.num_classes)

    def reveal(self, regions) -> None:
        """Paint the ground truth (background as BACKGROUND) inside ``regions`` (NextRegion, with slice)."""
        for region in regions:
            z = region.slice_index or 0
            rows, cols = slice(*region.rows), slice(*region.cols)
            truth = self.task.train_truth[z, rows, cols]
            self.painted[z, rows, cols] = np.where(truth == 0, BACKGROUND, truth)


def guided_regions(user: User, tile: int, count: int):
    from napari_dinounet.engine.next_regions import next_regions
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.uncertainty import Uncertainty

    # with mirror TTA: the entropy of the mirrors' mean also rises where they disagree (a better error detector)
    job = user.predictor().predict(user.task.train_image, tile=128, mirror=True, outputs=(Uncertainty(),))
    (uncertainty,) = drain(job)
    regions = next_regions(uncertainty, tile=tile, count=count, labelled=user.painted != 0)
    return regions


def random_regions(user: User, tile: int, count: int, rng: np.random.Generator):
    from napari_dinounet.engine.next_regions import next_regions

    # every tile with an unlabelled pixel has a positive score on a map of ones: the candidates
    candidates = next_regions(
        np.ones(user.painted.shape, np.float32), tile=tile, count=10**9, labelled=user.painted != 0
    )
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[i] for i in picked]


def run_curve(task: Task, strategy: str, backbone, args, workdir: Path, seed: int) -> list[dict]:
    """The rounds of one strategy: [{round, labelled_fraction, dice, seconds}], round 0 = strokes only.
    ``seed`` picks the strokes, the fresh heads, the patches and the random tiles; both strategies of one
    seed start from the same round 0."""
    import torch

    torch.manual_seed(seed)
    workdir = workdir / f"{strategy}{seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    user = User(task, backbone, args, workdir, seed=seed)
    rng = np.random.default_rng(seed + 1)
    started = time.perf_counter()
    user.train(args.first_steps)
    curve = [{"round": 0, "labelled_fraction": user.labelled_fraction, "dice": user.score()}]
    for number in range(1, args.rounds + 1):
        if strategy == "guided":
            regions = guided_regions(user, args.tile, args.regions)
        else:
            regions = random_regions(user, args.tile, args.regions, rng)
        user.reveal(regions)
        user.train(args.steps)
        curve.append({"round": number, "labelled_fraction": user.labelled_fraction, "dice": user.score()})
        print(
            f"  {task.name} {strategy} seed {seed} round {number}: {curve[-1]['labelled_fraction']:.2%} labelled, "
            f"Dice {curve[-1]['dice']:.3f}",
            flush=True,
        )
    curve[-1]["seconds"] = time.perf_counter() - started
    return curve


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The seeds' curves averaged round by round (labelled fraction and Dice)."""
    return [
        {
            "round": points[0]["round"],
            "labelled_fraction": float(np.mean([p["labelled_fraction"] for p in points])),
            "dice": float(np.mean([p["dice"] for p in points])),
            "dice_per_seed": [p["dice"] for p in points],
        }
        for points in zip(*curves)
    ]


def full_label_dice(task: Task, backbone, args, workdir: Path) -> float:
    """Fresh heads trained on every training pixel, for the same total steps as a whole curve."""
    import torch

    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.train import TrainSettings, train

    torch.manual_seed(0)
    steps = args.first_steps + args.rounds * args.steps
    samples = samples_from_arrays([task.train_image], [task.train_truth], num_classes=task.num_classes)
    settings = TrainSettings(size="tiny", patch_size=64, batch_size=4, epochs=1, iters_per_epoch=steps, lr=args.lr)
    out = workdir / "full.safetensors"
    drain(train(samples, validation=[], out=out, backbone=backbone, settings=settings))
    (labels,) = drain(Predictor(*load_heads(out, backbone)).predict(task.test_image, tile=128))
    return mean_dice(labels, task.test_truth, task.num_classes)


def pixels_to_reach(curve: list[dict], target: float) -> float | None:
    """The labelled fraction at the first round whose Dice reaches ``target``, None if none does."""
    return next((point["labelled_fraction"] for point in curve if point["dice"] >= target), None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for axis, (name, task) in zip(axes[0], tasks.items()):
        for strategy, style in (("guided", "o-"), ("random", "s--")):
            curve = task["curves"][strategy]
            axis.plot([100 * p["labelled_fraction"] for p in curve], [p["dice"] for p in curve], style, label=strategy)
        axis.axhline(task["full_label_dice"], color="grey", lw=1, label="full labels")
        axis.axhline(0.95 * task["full_label_dice"], color="grey", lw=1, ls=":", label="95 % of full labels")
        axis.set(title=f"{name}: Dice vs labelled pixels", xlabel="training pixels labelled (%)", ylabel="Dice")
        axis.legend(loc="lower right")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps, one seed (a smoke run)")
    parser.add_argument("--seeds", type=int, help="independent runs averaged per curve; default 2 (--quick: 1)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1: on a shared machine more threads made steps slower"
    )
    args = parser.parse_args()
    args.rounds, args.steps, args.first_steps = (3, 10, 30) if args.quick else (5, 15, 40)
    args.seeds = args.seeds or (1 if args.quick else 2)
    args.tile, args.regions, args.lr, args.fine_lr, args.stroke_coverage = 32, 4, 4e-3, 1e-3, 0.01

    import tempfile

    import torch

    from napari_dinounet.engine.backbone import load_backbone

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's warning
        backbone = load_backbone("random:tiny")
    tasks = [nuclei_task(), mni_task(slice(4, 16, 4), slice(6, 18, 4))]
    results = {
        "settings": {
            k: getattr(args, k)
            for k in ("rounds", "steps", "first_steps", "tile", "regions", "lr", "fine_lr", "stroke_coverage", "seeds")
        },
        "tasks": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="label-efficiency-") as tmp:
        for task in tasks:
            workdir = Path(tmp) / task.name
            print(f"{task.name}: train {task.train_image.shape}, score {task.test_image.shape}", flush=True)
            full = full_label_dice(task, backbone, args, workdir)
            per_seed = {
                strategy: [run_curve(task, strategy, backbone, args, workdir, seed) for seed in range(args.seeds)]
                for strategy in ("guided", "random")
            }
            curves = {strategy: mean_curve(runs) for strategy, runs in per_seed.items()}
            target = 0.95 * full
            reach = {strategy: pixels_to_reach(curve, target) for strategy, curve in curves.items()}
            met = reach["guided"] is not None and (reach["random"] is None or reach["guided"] <= 0.5 * reach["random"])
            results["tasks"][task.name] = {
                "full_label_dice": full,
                "target_dice": target,
                "curves": curves,
                "curves_per_seed": per_seed,
                "labelled_fraction_to_reach_target": reach,
                "goal_met": met,
            }
    results["seconds"] = time.perf_counter() - started
    results["machine"] = machine(load_start, os.getloadavg()[0], backbone="random:tiny")

    print(f"\n{'task':8} {'round':>5} {'guided %':>9} {'guided Dice':>11} {'random %':>9} {'random Dice':>11}")
    for name, task in results["tasks"].items():
        for g, r in zip(task["curves"]["guided"], task["curves"]["random"]):
            print(
                f"{name:8} {g['round']:5d} {100 * g['labelled_fraction']:9.2f} {g['dice']:11.3f} "
                f"{100 * r['labelled_fraction']:9.2f} {r['dice']:11.3f}"
            )
        reach = task["labelled_fraction_to_reach_target"]
        shown = {k: "not reached" if v is None else f"{100 * v:.2f} %" for k, v in reach.items()}
        print(
            f"{name}: full labels Dice {task['full_label_dice']:.3f}; 95 % of it ({task['target_dice']:.3f}) reached "
            f"with guided {shown['guided']}, random {shown['random']} labelled; goal met: {task['goal_met']}"
        )
    print(f"total {results['seconds']:.0f} s")
    stem = "label_efficiency_quick" if args.quick else "label_efficiency"
    write_json(RESULTS / f"{stem}.json", results)
    plot(results, RESULTS / f"{stem}.png")


if __name__ == "__main__":
    main()
