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
with ours tile by tile and with MONAI's. ``--no-memory`` skips the memory processes (the large backbones
take minutes per run on a CPU); the labels then come from the timing process. A random backbone's
blocks barely mix the tokens (layer scales 1e-5, small q/k weights: each patch's features are nearly
its own, which no window changes, so the labels would agree trivially); ``--mixing`` sets the layer
scales to 1 and multiplies the q/k/v weights by 4 (the test_shared_backbone backbone), so that every
token attends across the window, as trained DINOv3 does, and the agreement means something.

    .venv/bin/python benchmarks/sliding_window.py                    # 1024 and 2048, small conv net
    .venv/bin/python benchmarks/sliding_window.py --sizes 4096 --repeats 1 \
        --json benchmarks/results/sliding_window_4096.json
    .venv/bin/python benchmarks/sliding_window.py --network dinounet-tiny --sizes 1024 \
        --json benchmarks/results/sliding_window_dinounet_tiny.json
    .venv/bin/python benchmarks/sliding_window.py --network dinounet-l --sizes 1024 --repeats 1 --no-memory \
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


NETWORKS = ("conv", "dinounet-tiny", "dinounet-s", "dinounet-b", "dinounet-l")


def build_network(name: str):
    """The network both sliding windows run: a small conv net, or Dino U-Net on a random backbone (mixing
    the tokens when MIXING is set in the environment: see the module docstring)."""
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
    if os.environ.get("MIXING"):
        with torch.no_grad():
            for parameter_name, parameter in model.backbone.vit.named_parameters():
                if ".gamma_" in parameter_name:
                    parameter.fill_(1.0)
                elif parameter_name.endswith("qkv.weight"):
                    parameter.mul_(4.0)
    return model


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
    image = make_image(size)
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
    return {"times": times, "torch_threads": torch.get_num_threads()}


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
    loaded = {impl: np.load(path) for impl, path in labels.items()}
    row["labels_agree"] = float(np.mean(loaded["ours"] == loaded["monai"]))
    # agreement means little when one class covers nearly everything
    row["class_fractions"] = (np.bincount(loaded["ours"].ravel(), minlength=CLASSES) / loaded["ours"].size).tolist()
    row["time_ratio"] = row["ours"]["seconds"] / row["monai"]["seconds"]
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
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation; the best counts")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mixing:
        os.environ["MIXING"] = "1"  # the worker processes inherit it
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
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
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows.append(measure(size, args.network, args.repeats, Path(tmp), memory=not args.no_memory))
            print(json.dumps(rows[-1]), file=sys.stderr)
    machine["load_after"] = os.getloadavg()
    import monai
    import torch

    machine.update(torch=torch.__version__, monai=monai.__version__)
    report = {"machine": machine, "mixing_backbone": bool(os.environ.get("MIXING")), "rows": rows}
    print(table(report))
    write_json(args.json, report)


def table(report: dict) -> str:
    lines = [
        "| image | network | impl | time (s) | peak RSS (MB) | extra over baseline (MB) | time / MONAI's "
        "| peak / MONAI's | labels agree with MONAI | labels agree with ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
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
            lines.append(
                f"| {row['size']}x{row['size']} | {row['network']} | {impl} | {r['seconds']:.2f} | {peak} | {ratios} |"
            )
    m = report["machine"]
    lines.append(
        f"\n{m['cpus']} CPUs, load average {m['load_before'][0]:.1f} before / {m['load_after'][0]:.1f} "
        f"after; torch {m['torch']}, MONAI {m['monai']}; tile {TILE}, step 0.5, batch {BATCH}, "
        "Gaussian sigma tile/8."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
