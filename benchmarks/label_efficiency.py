"""Label efficiency of the correction loop: a simulated user, guided by "correct here next" or at random.

    python benchmarks/label_efficiency.py [--quick] [--seeds N] [--rounds R] [--tile T] ... [--jobs J]

Two real data sets with ground truth (bundled): the nuclei image (train on its left half, score on its
right half) and the MNI152 slices (train on slices 4, 8, 12, score on 6, 10, 14). The simulated user starts
from a few strokes drawn from the ground truth (:func:`engine.sparse.simulated_scribbles`, 0.4 % of the
training pixels) and trains fresh tiny heads on them for 40 steps (sparse labels, learning rate 4e-3).
Then, for each of 12 rounds, the ground truth is revealed in 4 squares of 16 x 16 pixels, chosen

  (a) guided: the first 4 of :func:`engine.next_regions.next_regions` (``gap=1``: no two in one round
      touch, as the "Next" widget ranks them) on the current heads' uncertainty
      (:class:`engine.uncertainty.Uncertainty`, with mirror TTA) of the *training* image, already labelled
      pixels left out;
  (b) random: squares of the same grid drawn uniformly among those not yet fully labelled,

and the heads are fine-tuned 10 steps from the previous round's (sparse labels: strokes + revealed
squares; learning rate 1e-3 with the usual polynomial decay). Both strategies get the same strokes, the
same training and the same seeds; the scoring part is never used for choosing. After every round the
Dice (mean over the foreground classes, no TTA) on the scoring part is recorded against the share of
training pixels labelled. A full-label run (every training pixel labelled, fresh heads, the same 160
steps in all) gives the reference Dice.

Curves are the mean of ``--seeds`` (3) runs: strokes, heads, patches and random squares differ by seed,
and both strategies of one seed start from the same round 0. "Pixels to reach the target" is where a
curve first reaches 95 % of the full-label Dice, linearly interpolated between the two rounds around the
crossing; it is given for the mean curves (the goal) and for each seed (the spread), with the ratio
guided / random. Goal (issue 12): that ratio at most 0.5.

Work is spread over ``--jobs`` processes (2), one curve at a time each, one torch thread each; every curve
seeds its own randomness, so the numbers do not depend on the spreading. Backbone ``random:tiny`` (no
DINOv3 weights on this machine): absolute Dice values are below a real backbone's; the comparison between
the curves is the point. Writes a table to stdout, JSON to benchmarks/results/label_efficiency[_quick].json
(``--stem`` another name) and a PNG of the curves beside it (matplotlib: the ``benchmarks`` extra).
"""

from __future__ import annotations

import argparse
import json
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
DEFAULTS = {
    "rounds": 12,
    "steps": 10,
    "first_steps": 40,
    "tile": 16,
    "regions": 4,
    "gap": 1,
    "stroke_coverage": 0.004,
    "fine_lr": 1e-3,
    "seeds": 3,
}
STRATEGIES = ("guided", "random")  # the comparison the goal is about; --strategies can add "disagreement"
GUIDED = {"guided": "uncertainty", "disagreement": "disagreement"}  # guided strategy -> the map it ranks
QUICK = {"rounds": 3, "steps": 10, "first_steps": 30, "seeds": 1}
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


def guided_regions(user: User, tile: int, count: int, gap: int, measure: str = "uncertainty"):
    """The first ``count`` of next_regions on the current heads' map of the training image: ``measure``
    "uncertainty" (the normalised entropy, what Segment's "next" layer ranks by) or "disagreement" (the
    mirrors' disagreement alone, :class:`MirrorDisagreement`)."""
    from napari_dinounet.engine.next_regions import next_regions
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.uncertainty import MirrorDisagreement, Uncertainty

    # with mirror TTA: the entropy of the mirrors' mean also rises where they disagree (a better error detector)
    output = Uncertainty() if measure == "uncertainty" else MirrorDisagreement()
    job = user.predictor().predict(user.task.train_image, tile=128, mirror=True, outputs=(output,))
    (uncertainty,) = drain(job)
    return next_regions(uncertainty, tile=tile, count=count, labelled=user.painted != 0, gap=gap)


def random_regions(user: User, tile: int, count: int, rng: np.random.Generator):
    from napari_dinounet.engine.next_regions import next_regions

    # every tile with an unlabelled pixel has a positive score on a map of ones: the candidates
    candidates = next_regions(
        np.ones(user.painted.shape, np.float32), tile=tile, count=10**9, labelled=user.painted != 0, gap=0
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
        if strategy in GUIDED:
            regions = guided_regions(user, args.tile, args.regions, args.gap, GUIDED[strategy])
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
    """The labelled fraction where the curve first reaches ``target``: linearly interpolated between the
    last round below it and the first round at or above it (the first round's own fraction when round 0
    already reaches it), None if no round does."""
    for before, point in zip([None, *curve], curve):
        if point["dice"] >= target:
            if before is None:
                return point["labelled_fraction"]
            share = (target - before["dice"]) / (point["dice"] - before["dice"])
            return before["labelled_fraction"] + share * (point["labelled_fraction"] - before["labelled_fraction"])
    return None


def ratio(reach: dict, strategy: str = "guided") -> float | None:
    """``strategy``'s labelled fraction to reach the target over random's (the goal, for guided: at most
    0.5); None when either never reaches it (guided never: the goal is not met; random never: no finite
    ratio)."""
    if reach[strategy] is None or reach["random"] is None:
        return None
    return reach[strategy] / reach["random"]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for axis, (name, task) in zip(axes[0], tasks.items()):
        for strategy, curve in task["curves"].items():
            style = {"guided": "o-", "random": "s--"}.get(strategy, "^-.")
            shares = [100 * p["labelled_fraction"] for p in curve]
            (line,) = axis.plot(shares, [p["dice"] for p in curve], style, label=f"{strategy} (mean of seeds)")
            low, high = ([f(p["dice_per_seed"]) for p in curve] for f in (min, max))
            axis.fill_between(shares, low, high, color=line.get_color(), alpha=0.15, lw=0)
            reached = task["labelled_fraction_to_reach_target"][strategy]
            if reached is not None:
                axis.axvline(100 * reached, color=line.get_color(), lw=1, ls=":")
        axis.axhline(task["full_label_dice"], color="grey", lw=1, label="full labels")
        axis.axhline(0.95 * task["full_label_dice"], color="grey", lw=1, ls=":", label="95 % of full labels")
        axis.set(
            title=f"{name}: Dice vs labelled pixels (band: seeds' range)",
            xlabel="training pixels labelled (%)",
            ylabel="Dice",
        )
        axis.legend(loc="lower right")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    print(f"plot written to {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps, one seed (a smoke run)")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON already written")
    parser.add_argument("--seeds", type=int, help=f"independent runs averaged per curve (default {DEFAULTS['seeds']})")
    parser.add_argument("--rounds", type=int, help=f"reveal rounds after the strokes (default {DEFAULTS['rounds']})")
    parser.add_argument("--steps", type=int, help=f"fine-tune steps per round (default {DEFAULTS['steps']})")
    parser.add_argument("--first-steps", type=int, help=f"steps on the strokes (default {DEFAULTS['first_steps']})")
    parser.add_argument("--tile", type=int, help=f"side of a revealed square, pixels (default {DEFAULTS['tile']})")
    parser.add_argument("--regions", type=int, help=f"squares revealed per round (default {DEFAULTS['regions']})")
    parser.add_argument("--gap", type=int, help=f"next_regions' gap for guided picks (default {DEFAULTS['gap']})")
    parser.add_argument(
        "--stroke-coverage",
        type=float,
        help=f"share of pixels the strokes cover (default {DEFAULTS['stroke_coverage']})",
    )
    parser.add_argument("--fine-lr", type=float, help=f"fine-tune learning rate (default {DEFAULTS['fine_lr']})")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated, of {', '.join([*GUIDED, 'random'])} (default {','.join(STRATEGIES)})",
    )
    parser.add_argument("--tasks", default="nuclei,mni152", help="comma-separated: nuclei, mni152 (default both)")
    parser.add_argument("--stem", help="results file name without suffix (default label_efficiency[_quick])")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, each running whole curves (default 2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1: on a shared machine more threads made steps slower"
    )
    args = parser.parse_args()
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    unknown = set(args.strategies.split(",")) - {*GUIDED, "random"}
    if unknown:  # an unknown name would otherwise run as random
        parser.error(f"unknown strategies {', '.join(sorted(unknown))}: choose from {', '.join([*GUIDED, 'random'])}")
    args.lr = 4e-3
    args.stem = args.stem or ("label_efficiency_quick" if args.quick else "label_efficiency")
    return args


TASKS = {"nuclei": nuclei_task, "mni152": lambda: mni_task(slice(4, 16, 4), slice(6, 18, 4))}
_worker_state: dict = {}


def _job(job: tuple, args: argparse.Namespace):
    """One independent piece of work, in a worker process: ("full", task) -> the full-label Dice, or
    (strategy, task, seed) -> that curve. The backbone (random:tiny, seed 0) and the tasks are made once
    per process; every job seeds its own randomness, so results do not depend on how jobs are spread."""
    import tempfile

    import torch

    from napari_dinounet.engine.backbone import load_backbone

    if not _worker_state:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random backbone's warning
            _worker_state["backbone"] = load_backbone("random:tiny")
    backbone = _worker_state["backbone"]
    task = _worker_state.setdefault(job[1], TASKS[job[1]]())
    with tempfile.TemporaryDirectory(prefix="label-efficiency-") as tmp:
        if job[0] == "full":
            return full_label_dice(task, backbone, args, Path(tmp))
        return run_curve(task, job[0], backbone, args, Path(tmp), job[2])


def main() -> None:
    args = parse_args()
    if args.replot:
        plot(json.loads((RESULTS / f"{args.stem}.json").read_text()), RESULTS / f"{args.stem}.png")
        return
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    names = args.tasks.split(",")
    for name in names:
        task = TASKS[name]()
        print(f"{name}: train {task.train_image.shape}, score {task.test_image.shape}", flush=True)
    strategies = args.strategies.split(",")
    jobs = [("full", name) for name in names] + [
        (strategy, name, seed) for name in names for strategy in strategies for seed in range(args.seeds)
    ]
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        done = dict(zip(jobs, pool.map(_job, jobs, [args] * len(jobs))))
    settings = {k: getattr(args, k) for k in (*DEFAULTS, "lr", "jobs", "threads", "strategies")}
    results = {"settings": settings, "tasks": {}}
    for name in names:
        full = done[("full", name)]
        per_seed = {strategy: [done[(strategy, name, seed)] for seed in range(args.seeds)] for strategy in strategies}
        curves = {strategy: mean_curve(runs) for strategy, runs in per_seed.items()}
        target = 0.95 * full
        reach = {strategy: pixels_to_reach(curve, target) for strategy, curve in curves.items()}
        reach_per_seed = [
            {strategy: pixels_to_reach(per_seed[strategy][seed], target) for strategy in per_seed}
            for seed in range(args.seeds)
        ]
        results["tasks"][name] = {
            "full_label_dice": full,
            "target_dice": target,
            "curves": curves,
            "curves_per_seed": per_seed,
            "labelled_fraction_to_reach_target": reach,
            "labelled_fraction_to_reach_target_per_seed": reach_per_seed,
        }
        if "random" in reach:  # each guided strategy against random, for the mean curves and per seed
            for strategy in (s for s in strategies if s in GUIDED):
                key = "guided" if strategy == "guided" else strategy
                results["tasks"][name][f"{key}_over_random"] = ratio(reach, strategy)
                results["tasks"][name][f"{key}_over_random_per_seed"] = [ratio(r, strategy) for r in reach_per_seed]
            if "guided" in reach:
                met = reach["guided"] is not None and (
                    reach["random"] is None or reach["guided"] <= 0.5 * reach["random"]
                )
                results["tasks"][name]["goal_met"] = met
    results["seconds"] = time.perf_counter() - started
    results["machine"] = machine(load_start, os.getloadavg()[0], backbone="random:tiny")
    report(results)
    write_json(RESULTS / f"{args.stem}.json", results)
    plot(results, RESULTS / f"{args.stem}.png")


def _percent(value: float | None) -> str:
    return "never" if value is None else f"{100 * value:.2f} %"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _dice_with_seeds(point: dict) -> str:
    return f"{point['dice']:.3f} ({min(point['dice_per_seed']):.3f}-{max(point['dice_per_seed']):.3f})"


def report(results: dict) -> None:
    """The table: mean curves (with the seeds' lowest and highest Dice), then per task the labelled share
    each strategy needs to reach the target, for the mean curves and for each seed."""
    strategies = list(next(iter(results["tasks"].values()))["curves"])
    header = " ".join(f"{strategy + ' %':>15} {strategy + ' Dice (seeds)':>30}" for strategy in strategies)
    print(f"\n{'task':8} {'round':>5} {header}")
    for name, task in results["tasks"].items():
        for points in zip(*task["curves"].values()):
            shown = " ".join(f"{100 * p['labelled_fraction']:15.2f} {_dice_with_seeds(p):>30}" for p in points)
            print(f"{name:8} {points[0]['round']:5d} {shown}")
    for name, task in results["tasks"].items():
        reach = task["labelled_fraction_to_reach_target"]
        reached = ", ".join(f"{strategy} {_percent(share)}" for strategy, share in reach.items())
        ratios = ", ".join(
            f"{key.removesuffix('_over_random')} / random {_ratio_text(value)}"
            for key, value in task.items()
            if key.endswith("_over_random")
        )
        print(
            f"{name}: full labels Dice {task['full_label_dice']:.3f}; 95 % of it ({task['target_dice']:.3f}) reached "
            f"with {reached} labelled ({ratios}); goal met: {task.get('goal_met', '-')}"
        )
        for seed, each in enumerate(task["labelled_fraction_to_reach_target_per_seed"]):
            per_seed = ", ".join(
                f"{key.removesuffix('_over_random_per_seed')} / random {_ratio_text(value[seed])}"
                for key, value in task.items()
                if key.endswith("_over_random_per_seed")
            )
            reached = ", ".join(f"{strategy} {_percent(share)}" for strategy, share in each.items())
            print(f"  seed {seed}: {reached} ({per_seed})")
    print(f"total {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
