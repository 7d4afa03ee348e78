"""Our sliding window (engine/predict.py) against MONAI's ``sliding_window_inference``, on the CPU.

Both run the same network with the same tile, overlap (step 0.5), Gaussian blending (sigma_scale 0.125,
mode "gaussian") and tile batch, on a uint16 image: ours from the raw image (statistics, per-band
normalisation, blending over open rows, argmax), MONAI from the image normalised with the same
statistics into a float32 tensor (that conversion is timed too), then argmax.

Memory: each implementation runs once in a fresh Python process (both import torch and MONAI); after
imports, model, image and a one-tile warm-up, the peak-RSS count is reset (Linux ``/proc/self/clear_refs``)
and the RSS noted as baseline; "peak" is the process's peak RSS (VmHWM) during the run, "extra" that peak
minus the baseline (glibc's mmap threshold is fixed at 1 MiB there, so freed arrays leave the RSS).
Time: both run ``--repeats`` times interleaved in one more process, so that both see the same load on a
shared machine; the best time counts. The labels of both are compared pixel by pixel.

With a Dino U-Net (``--network dinounet-<size>``, random backbone of that size: timing does not depend
on the weights) a third run, "shared", is ours in shared-backbone mode (``shared_backbone=True``: the
backbone once per window of up to 1024 px, each tile's heads from its slice); its labels are compared
with ours tile by tile and with MONAI's, and the timing process also times the mode's parts alone (the
backbone on each window shape and on a batch of tiles, the heads on a batch of tiles given their taps),
which says where the time goes and how fast shared mode could be with free heads. ``--no-memory`` skips
the memory processes (the large backbones take minutes per run on a CPU); the labels then come from the
timing process. ``--channels-last`` runs the heads channels-last (``use_channels_last``) in all three.

What the label agreement measures depends on the backbone and the heads. A random backbone's blocks
barely mix the tokens (layer scales 1e-5, small q/k weights: each patch's features are nearly its own,
which no window changes, so the labels agree trivially); ``--mixing`` sets the layer scales to 1 and
multiplies the q/k/v weights by 4 (the test_shared_backbone backbone), so that every token attends
across the window, further than trained DINOv3 is known to: the worst case. Random heads put the class
probabilities near a tie almost everywhere, so any change of the features flips labels: agreement then
measures noise. ``--train-heads STEPS`` first fine-tunes the heads on the bundled nuclei image
(foreground against background; the backbone's taps of 36 crops of 256 x 256 cached, Adam, batch 2, in a
process of its own at low priority) and every run uses them; ``--image nuclei`` predicts the nuclei
image mirrored out to each size (and scores every implementation's labels against its ground truth,
mirrored alike) instead of the synthetic one.

    .venv/bin/python benchmarks/sliding_window.py                    # 1024 and 2048, small conv net
    .venv/bin/python benchmarks/sliding_window.py --sizes 4096 --repeats 1 \
        --json benchmarks/results/sliding_window_4096.json
    .venv/bin/python benchmarks/sliding_window.py --network dinounet-tiny --sizes 1024 \
        --json benchmarks/results/sliding_window_dinounet_tiny.json
    .venv/bin/python benchmarks/sliding_window.py --network dinounet-l --sizes 1024 --repeats 2 --no-memory \
        --mixing --train-heads 60 --image nuclei --channels-last \
        --json benchmarks/results/sliding_window_dinounet_l.json

Writes a Markdown table to stdout and JSON to benchmarks/results/sliding_window.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import in_fresh_process, write_json

TILE = 512
BATCH = 4
CLASSES = 2
RESULTS = Path(__file__).parent / "results" / "sliding_window.json"
OPTIONS_VARIABLE = "SLIDING_WINDOW_OPTIONS"


NETWORKS = ("conv", "dinounet-tiny", "dinounet-s", "dinounet-b", "dinounet-l")


def options() -> dict:
    """The network and image options of this run (main sets them; its worker processes inherit them)."""
    return json.loads(os.environ.get(OPTIONS_VARIABLE, "{}"))


def build_network(name: str):
    """The network all sliding windows run: a small conv net, or Dino U-Net on a random backbone, made
    to mix the tokens, with trained heads, channels-last, as :func:`options` say (module docstring)."""
    import torch

    torch.manual_seed(0)
    if name == "conv":
        layers = [torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU()]
        for _ in range(2):
            layers += [torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()]
        layers.append(torch.nn.Conv2d(16, CLASSES, 1))
        return torch.nn.Sequential(*layers).eval()
    import warnings

    from napari_dinounet.engine.network import build_dinounet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's warning
        model = build_dinounet(name.removeprefix("dinounet-"), num_classes=CLASSES).eval()
    chosen = options()
    if chosen.get("mixing"):
        with torch.no_grad():
            for parameter_name, parameter in model.backbone.vit.named_parameters():
                if ".gamma_" in parameter_name:
                    parameter.fill_(1.0)
                elif parameter_name.endswith("qkv.weight"):
                    parameter.mul_(4.0)
    if chosen.get("heads"):
        model.load_heads_state_dict(torch.load(chosen["heads"], weights_only=True))
    if chosen.get("channels_last"):
        model.use_channels_last()
    return model


TRAIN_CROP = 256
TRAIN_BATCH = 2
TRAIN_LR = 1e-3


def train_heads(network: str, steps: int, heads_out: Path) -> dict:
    """Fine-tune the heads of ``network`` for ``steps`` Adam steps on the bundled nuclei image (foreground
    against background) and save them to ``heads_out``; returns the loss of the first and last ten steps.

    The crops: 256 x 256 at offsets 0, 128 and 256 per axis, each in its four mirror images (36), their
    backbone taps computed once."""
    import numpy as np
    import torch

    from napari_dinounet.engine import normalize
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.loss import dice_ce_loss

    model = build_network(network)
    image, instances = load_nuclei()
    norm = normalize.Normalization("zscore")
    pixels = torch.from_numpy(normalize.apply(image[None], norm, normalize.statistics_for(image[None], norm)))
    foreground = torch.from_numpy((instances > 0).astype(np.int64))
    offsets = range(0, image.shape[0] - TRAIN_CROP + 1, TRAIN_CROP // 2)
    crops, targets, taps = [], [], []
    with torch.no_grad():
        for top in offsets:
            for left in offsets:
                window = (slice(top, top + TRAIN_CROP), slice(left, left + TRAIN_CROP))
                for dims in ((), (-1,), (-2,), (-2, -1)):
                    crop = pixels[(slice(None), *window)].flip(dims)[None]
                    crops.append(crop)
                    targets.append(foreground[window].flip([d + 1 for d in dims]))
                    taps.append(model.backbone_taps(crop))
    parameters = [p for module in model.heads().values() for p in module.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=TRAIN_LR)
    order = torch.randperm(
        len(crops) * (steps * TRAIN_BATCH // len(crops) + 1), generator=torch.Generator().manual_seed(0)
    )
    model.train()
    losses = []
    for step in range(steps):
        chosen = [int(i) % len(crops) for i in order[step * TRAIN_BATCH : (step + 1) * TRAIN_BATCH]]
        logits = model(
            torch.cat([crops[i] for i in chosen]), taps=[torch.cat(t) for t in zip(*(taps[i] for i in chosen))]
        )
        loss = dice_ce_loss(logits, torch.stack([targets[i] for i in chosen]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    torch.save(model.eval().heads_state_dict(), heads_out)
    return {
        "steps": steps,
        "crop": TRAIN_CROP,
        "batch": TRAIN_BATCH,
        "lr": TRAIN_LR,
        "loss_first_10": float(np.mean(losses[:10])),
        "loss_last_10": float(np.mean(losses[-10:])),
    }


def nuclei_image(size: int):
    """The bundled nuclei image and its foreground (labels > 0), mirrored out (or cropped) to (size, size)."""
    import numpy as np

    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    pad = [(0, max(0, size - extent)) for extent in image.shape]
    image, foreground = (np.pad(a, pad, mode="symmetric")[:size, :size] for a in (image, instances > 0))
    return image, foreground.astype(np.uint8)


def test_image(size: int):
    """The image the sliding windows predict: :func:`make_image`, or the nuclei one (:func:`options`)."""
    return nuclei_image(size)[0] if options().get("image") == "nuclei" else make_image(size)


def make_image(size: int):
    """A uint16 test image (size, size): smooth structures plus noise, like a microscopy field.

    Made 256 rows at a time, so that making it leaves no peak of its own in the measurement."""
    import numpy as np

    rng = np.random.default_rng(size)
    image = np.empty((size, size), np.uint16)
    x = np.sin(np.arange(size, dtype=np.float32) / 64)
    for top in range(0, size, 256):
        y = np.cos(np.arange(top, min(top + 256, size), dtype=np.float32) / 64 * 0.7)
        rows = 1000 + 500 * y[:, None] * x[None, :] + rng.normal(0, 50, (len(y), size)).astype(np.float32)
        image[top : top + len(y)] = rows.clip(0, 65535)
    return image


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start the peak-RSS count afresh from the current RSS (Linux: /proc/self/clear_refs); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the start (ru_maxrss, KiB on Linux)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return _status_mb("VmRSS") or peak_rss_mb()


def run_ours(model, image, shared_backbone: bool = False):
    from napari_dinounet.engine.predict import predict
    from napari_dinounet.engine.progress import drain

    return drain(predict(model, image, patch_size=TILE, step=0.5, batch_size=BATCH, shared_backbone=shared_backbone))


def run_shared(model, image):
    return run_ours(model, image, shared_backbone=True)


def run_monai(model, image):
    import torch
    from monai.inferers import sliding_window_inference

    from napari_dinounet.engine import normalize

    norm = normalize.Normalization("zscore")
    stats = normalize.statistics_for(image[None], norm)
    x = torch.from_numpy(normalize.apply(image[None], norm, stats))[None]
    with torch.no_grad():
        logits = sliding_window_inference(
            x, (TILE, TILE), BATCH, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    return logits[0].argmax(0).to(torch.uint8).numpy()


def setup(network: str, size: int):
    """Imports (both import MONAI, so that baselines agree), the network, the image, and a one-tile warm-up
    of both implementations (first-call costs are not the sliding window's)."""
    import monai.inferers  # noqa: F401

    model = build_network(network)
    image = test_image(size)
    for impl in runs_for(network):
        if impl != "shared":  # its heads are warm from ours; its window's backbone is not (a cost it keeps)
            RUNS[impl](model, make_image(TILE))
    return model, image


def memory_worker(impl: str, size: int, network: str, labels_out: Path) -> dict:
    """Peak RSS of one run of ``impl``, in a fresh process; its labels are saved for the comparison."""
    import numpy as np

    model, image = setup(network, size)
    peak_was_reset = reset_peak_rss()
    baseline = rss_mb()
    np.save(labels_out, RUNS[impl](model, image))
    peak = peak_rss_mb()
    return {
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "extra_rss_mb": peak - baseline,
        "peak_was_reset": peak_was_reset,
    }


def timing_worker(size: int, network: str, repeats: int, labels_dir: Path) -> dict:
    """Seconds per run of every implementation, interleaved in one process (in turn first and last over
    the rounds) so that all see the same load on a shared machine; each one's last labels are saved in
    ``labels_dir`` as <impl>.npy."""
    import numpy as np
    import torch

    model, image = setup(network, size)
    impls = runs_for(network)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for round_ in range(repeats):
        for impl in sorted(impls, reverse=bool(round_ % 2)):
            start = time.perf_counter()
            labels = RUNS[impl](model, image)
            times[impl].append(time.perf_counter() - start)
            np.save(labels_dir / f"{impl}.npy", labels)
    result = {"times": times, "torch_threads": torch.get_num_threads()}
    if "shared" in impls:
        result["parts"] = time_parts(model, size)
    return result


def time_parts(model, size: int) -> dict:
    """Seconds of the Dino U-Net's parts alone, each timed once after a warm-up, for a (size, size) image:
    the backbone on each window of shared mode (``windows``: (height, width) -> seconds, the tile spacing's
    RoPE) and on one batch of tiles (``backbone_per_tile``: over the batch), the heads on a batch of tiles
    given their taps (``heads_per_tile``); with the tile count, what tile by tile and shared mode would take
    if those parts were all (``predicted``) and how fast shared mode could be over tile by tile with free
    heads (``bound_with_free_heads``)."""
    import torch

    from napari_dinounet.engine.backbone import PATCH_SIZE
    from napari_dinounet.engine.tiling import grid, shared_windows

    def seconds(run, *args, **kwargs) -> float:
        start = time.perf_counter()
        run(*args, **kwargs)
        return time.perf_counter() - start

    tile = (TILE, TILE)
    ys, xs = grid(size, size, tile, 0.5)
    windows = {(y0, x0, h, w) for y0, h in shared_windows(ys, TILE) for x0, w in shared_windows(xs, TILE)}
    spacing = (TILE // PATCH_SIZE,) * 2
    tiles = torch.randn(BATCH, 1, TILE, TILE)
    with torch.no_grad():
        taps = model.backbone_taps(tiles)
        model(tiles, taps=taps)  # warm-up
        backbone = seconds(model.backbone_taps, tiles) / BATCH
        heads = seconds(model, tiles, taps=taps) / BATCH
        by_shape = {}
        for _, _, h, w in sorted(windows):
            if (h, w) not in by_shape:
                by_shape[(h, w)] = seconds(model.backbone_taps, torch.randn(1, 1, h, w), rope_spacing=spacing)
    count = len(ys) * len(xs)
    window_total = sum(by_shape[(h, w)] for *_, h, w in windows)
    return {
        "tiles": count,
        "windows": {f"{h}x{w}": by_shape[(h, w)] for h, w in by_shape},
        "window_count": len(windows),
        "backbone_per_tile": backbone,
        "heads_per_tile": heads,
        "predicted": {"ours": count * (backbone + heads), "shared": window_total + count * heads},
        "bound_with_free_heads": count * backbone / window_total,
    }


RUNS = {"ours": run_ours, "monai": run_monai, "shared": run_shared}


def runs_for(network: str) -> list[str]:
    """The implementations compared for ``network``: shared-backbone mode needs a Dino U-Net."""
    return [impl for impl in RUNS if impl != "shared" or network.startswith("dinounet")]


# glibc's malloc keeps freed blocks below its (self-raising) mmap threshold in the process, where they
# still count as RSS: a fixed 1 MiB threshold hands big arrays back when freed, so RSS follows live memory.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def measure(size: int, network: str, repeats: int, tmp: Path, memory: bool = True) -> dict:
    """One table row: time ratios (interleaved, best of ``repeats``), peak memory (fresh process each,
    unless not ``memory``), label agreement."""
    import numpy as np

    impls = runs_for(network)
    row = {"size": size, "network": network, "tile": TILE, "step": 0.5, "batch": BATCH}
    labels = {}
    if memory:
        for impl in impls:
            labels[impl] = tmp / f"memory-{impl}.npy"
            row[impl] = in_fresh_process(
                __file__, "--worker", "memory", impl, str(size), network, str(labels[impl]), env=MEMORY_ENV
            )
    timing = in_fresh_process(__file__, "--worker", "timing", str(size), network, str(repeats), str(tmp))
    for impl in impls:
        labels.setdefault(impl, tmp / f"{impl}.npy")
        row.setdefault(impl, {}).update(seconds=min(timing["times"][impl]), all_seconds=timing["times"][impl])
    row["torch_threads"] = timing["torch_threads"]
    if "parts" in timing:
        row["parts"] = timing["parts"]
    loaded = {impl: np.load(path) for impl, path in labels.items()}
    row["labels_agree"] = float(np.mean(loaded["ours"] == loaded["monai"]))
    # agreement means little when one class covers nearly everything
    row["class_fractions"] = (np.bincount(loaded["ours"].ravel(), minlength=CLASSES) / loaded["ours"].size).tolist()
    row["time_ratio"] = row["ours"]["seconds"] / row["monai"]["seconds"]
    if options().get("image") == "nuclei":
        from napari_dinounet.engine.metrics import binary_dice

        foreground = nuclei_image(size)[1]
        row["dice_with_ground_truth"] = {impl: binary_dice(loaded[impl] == 1, foreground == 1) for impl in impls}
    if memory:
        row["peak_ratio"] = row["ours"]["peak_rss_mb"] / row["monai"]["peak_rss_mb"]
    if "shared" in impls:
        row["shared_labels_agree_with_ours"] = float(np.mean(loaded["shared"] == loaded["ours"]))
        row["shared_labels_agree_with_monai"] = float(np.mean(loaded["shared"] == loaded["monai"]))
        row["shared_speedup_over_monai"] = row["monai"]["seconds"] / row["shared"]["seconds"]
        row["shared_speedup_over_ours"] = row["ours"]["seconds"] / row["shared"]["seconds"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--network", choices=NETWORKS, default="conv")
    parser.add_argument("--no-memory", action="store_true", help="time and compare labels only (no memory runs)")
    parser.add_argument("--mixing", action="store_true", help="a backbone whose tokens attend across the window")
    parser.add_argument("--channels-last", action="store_true", help="the heads channels-last (use_channels_last)")
    parser.add_argument(
        "--train-heads", type=int, metavar="STEPS", help="fine-tune the heads on the nuclei image first"
    )
    parser.add_argument("--image", choices=("synthetic", "nuclei"), default="synthetic", help="the image predicted")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation; the best counts")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "train":
            os.nice(15)  # not a timing: leave the CPU to the measurements of others
            network, steps, heads_out = rest
            result = train_heads(network, int(steps), Path(heads_out))
        elif kind == "memory":
            impl, size, network, labels_out = rest
            result = memory_worker(impl, int(size), network, Path(labels_out))
        else:
            size, network, repeats, labels_dir = rest
            result = timing_worker(int(size), network, int(repeats), Path(labels_dir))
        print(json.dumps(result))
        return

    machine = {
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    chosen = {"mixing": args.mixing, "channels_last": args.channels_last, "image": args.image}
    os.environ[OPTIONS_VARIABLE] = json.dumps(chosen)  # the worker processes inherit it
    rows, training = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if args.train_heads:
            if not args.network.startswith("dinounet"):
                parser.error("--train-heads needs a Dino U-Net (--network dinounet-<size>)")
            heads = Path(tmp) / "heads.pt"
            training = in_fresh_process(__file__, "--worker", "train", args.network, str(args.train_heads), str(heads))
            os.environ[OPTIONS_VARIABLE] = json.dumps({**chosen, "heads": str(heads)})
        for size in args.sizes:
            rows.append(measure(size, args.network, args.repeats, Path(tmp), memory=not args.no_memory))
            print(json.dumps(rows[-1]), file=sys.stderr)
    machine["load_after"] = os.getloadavg()
    import monai
    import torch

    machine.update(torch=torch.__version__, monai=monai.__version__)
    report = {"machine": machine, "options": chosen, "trained_heads": training, "rows": rows}
    print(table(report))
    write_json(args.json, report)


def table(report: dict) -> str:
    lines = [
        "| image | network | impl | time (s) | peak RSS (MB) | extra over baseline (MB) | time / MONAI's "
        "| peak / MONAI's | labels agree with MONAI | labels agree with ours | Dice with ground truth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        monai = row["monai"]
        for impl in (impl for impl in RUNS if impl in row):
            r = row[impl]
            peak = f"{r['peak_rss_mb']:.0f} | {r['extra_rss_mb']:.0f}" if "peak_rss_mb" in r else "- | -"
            ratios = " | | | "
            if impl == "ours":
                peak_ratio = f"{row['peak_ratio']:.2f}" if "peak_ratio" in row else "-"
                ratios = f"{row['time_ratio']:.2f} | {peak_ratio} | {row['labels_agree']:.4%} | "
            elif impl == "shared":
                peak_ratio = f"{r['peak_rss_mb'] / monai['peak_rss_mb']:.2f}" if "peak_rss_mb" in r else "-"
                ratios = (
                    f"{r['seconds'] / monai['seconds']:.2f} | {peak_ratio} | "
                    f"{row['shared_labels_agree_with_monai']:.4%} | {row['shared_labels_agree_with_ours']:.4%}"
                )
            dice = f"{row['dice_with_ground_truth'][impl]:.4f}" if "dice_with_ground_truth" in row else "-"
            lines.append(
                f"| {row['size']}x{row['size']} | {row['network']} | {impl} | {r['seconds']:.2f} | {peak} | {ratios} "
                f"| {dice} |"
            )
    for row in report["rows"]:
        if "parts" in row:
            parts = row["parts"]
            windows = ", ".join(f"{shape} {seconds:.1f} s" for shape, seconds in parts["windows"].items())
            lines.append(
                f"\n{row['size']}x{row['size']}, parts alone: backbone {parts['backbone_per_tile']:.2f} s and heads "
                f"{parts['heads_per_tile']:.2f} s per tile ({parts['tiles']} tiles), backbone per window {windows} "
                f"({parts['window_count']} windows); predicted ours {parts['predicted']['ours']:.1f} s, shared "
                f"{parts['predicted']['shared']:.1f} s; shared over tile by tile with free heads at most "
                f"{parts['bound_with_free_heads']:.2f}x."
            )
    m = report["machine"]
    lines.append(
        f"\n{m['cpus']} CPUs, load average {m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} "
        f"after; torch {m['torch']}, MONAI {m['monai']}; tile {TILE}, step 0.5, batch {BATCH}, "
        f"Gaussian sigma tile/8; options {report['options']}; trained heads {report['trained_heads']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
