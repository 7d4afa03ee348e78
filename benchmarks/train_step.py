"""Seconds per training step and peak memory of Dino U-Net (S) on the CPU, with and without cached features.

Each case runs the real training loop (``engine.train.train``) for a few steps on the bundled nuclei
image (512x512, one sample, no validation) with the random ViT-S backbone (``random:s``: the shapes and
cost of pretrained DINOv3 ViT-S/16), the default FAPM projection, 2 classes and batch 2. A step is
everything the loop does per optimiser step: drawing and augmenting the patches (nnU-Net's full set
without the cache; mirroring and intensity only with it), forward, Dice+CE loss, backward, clipping, Adam.
With ``cache_features`` the backbone runs once per cached crop before training (reported as the cache
time, for ``CACHE_CROPS`` crops x 4 mirror variants) and never in a step.

Time: the interval between consecutive step events of the training generator; the first step is a
warm-up (oneDNN picks kernels at a new size) and is left out; the median and the fastest of the rest
(the fastest is the least disturbed by other work on a shared machine). Memory: every case runs in a
fresh Python process; "peak" is its peak resident set size (``ru_maxrss``), "extra" is the peak minus the
peak after imports, data and model construction: what training itself needed (Adam state, activations,
the feature cache).

    .venv/bin/python benchmarks/train_step.py           # 256 and 512, 5 timed steps per case
    .venv/bin/python benchmarks/train_step.py --quick   # 256 only, 2 timed steps
    .venv/bin/python benchmarks/train_step.py --size l --sizes 256 --json /tmp/l.json   # another size
    .venv/bin/python benchmarks/train_step.py --efficiency-only --against ../old-checkout   # before/after

Efficiency: in one more process per patch size, the network's forward + backward with cached features
(train mode, batch 2, a mean-of-logits loss; the FLOPs of a step but for the optimiser and the data) and
a 2048^3 fp32 GEMM run interleaved ``--steps`` times; achieved GFLOP/s (``torch.utils.flop_counter``) and
its fraction of the GEMM's, both medians; the channels-last heads' step is timed in the same rounds
(its speed-up over the default layout). ``--against DIR`` measures another checkout's engine (its
``src/`` first on the path) the same way, in processes alternating with this one's: a before/after.

Prints a Markdown table and writes JSON to benchmarks/results/train_step.json (or --json), with the
machine's 1-minute load average at the start and end. Cases run with OMP_WAIT_POLICY=PASSIVE unless set
otherwise, as ``dinounet train`` does.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import gemm_gflops, gemm_operands, gemm_seconds, in_fresh_process, machine, peak_rss_mib, write_json

PROJECTION = "fapm"
BATCH = 2
CACHE_CROPS = 4
RESULTS = Path(__file__).parent / "results" / "train_step.json"


def measure(size: str, pixels: int, cached: bool, steps: int, device: str = "cpu", batch: int = BATCH) -> dict:
    """Train ``steps`` + 1 steps at pixels x pixels on ``device`` in this process; return step times and memory."""
    import warnings

    import torch

    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.progress import Validation
    from napari_dinounet.engine.train import TrainSettings, build_model, train

    torch.manual_seed(0)
    image, labels = load_nuclei()
    samples = samples_from_arrays([image], [labels > 0])
    settings = TrainSettings(
        projection=PROJECTION,
        patch_size=pixels,
        batch_size=batch,
        epochs=1,
        iters_per_epoch=steps + 1,
        cache_features=cached,
        cache_crops=CACHE_CROPS,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
        backbone = load_backbone(f"random:{size}")
    model = build_model(backbone, settings, num_classes=2, in_channels=1)
    before = peak_rss_mib()

    stamps: dict[str, list[float]] = {"cache features": [], "train": []}
    with tempfile.TemporaryDirectory() as folder:
        run = train(
            samples,
            validation=[],
            out=Path(folder) / "heads.safetensors",
            backbone=backbone,
            settings=settings,
            model=model,
            device=device,
        )
        start = time.perf_counter()
        for event in run:
            if event.task == "train" and "loss" in event.metrics and not isinstance(event, Validation):
                stamps["train"].append(time.perf_counter())
            elif event.task == "cache features":
                stamps["cache features"].append(time.perf_counter())
    times = [b - a for a, b in zip(stamps["train"], stamps["train"][1:])]
    peak = peak_rss_mib()
    return {
        "size": size,
        "pixels": pixels,
        "cached_features": cached,
        "seconds_median": statistics.median(times),
        "seconds": times,
        "cache_seconds": stamps["cache features"][-1] - start if cached else None,
        "peak_rss_mib": round(peak, 1),
        "extra_rss_mib": round(peak - before, 1),
        "model_rss_mib": round(before, 1),
    }


def measure_efficiency(size: str, pixels: int, repeats: int) -> dict:
    """Achieved GFLOP/s of forward + backward with cached features, against a GEMM, interleaved."""
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
        model = build_dinounet(size, projection=PROJECTION, num_classes=2).train()
    x = torch.randn(BATCH, 1, pixels, pixels)
    taps = model.backbone_taps(x)
    # the channels-last heads (DinoUNet.use_channels_last), which speed the forward up, measured beside
    channels_last = copy.deepcopy(model).use_channels_last() if hasattr(model, "use_channels_last") else None

    def step(network) -> None:
        network.zero_grad(set_to_none=True)
        network(x, taps=taps).mean().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step(model)
    a, b = gemm_operands()
    gemm_seconds(a, b)
    if channels_last is not None:
        step(channels_last)  # its warm-up
    times: dict[str, list[float]] = {"gemm": [], "step": [], **({"step_channels_last": []} if channels_last else {})}
    for _ in range(repeats):
        times["gemm"].append(gemm_seconds(a, b))
        for key, network in (("step", model), ("step_channels_last", channels_last)):
            if network is not None:
                start = time.perf_counter()
                step(network)
                times[key].append(time.perf_counter() - start)
    gemm = gemm_gflops(times["gemm"])
    achieved = counter.get_total_flops() / statistics.median(times["step"]) / 1e9
    row = {
        "size": size,
        "pixels": pixels,
        "threads": torch.get_num_threads(),
        "gflop": counter.get_total_flops() / 1e9,
        "gemm_gflops": gemm,
        "gflops": achieved,
        "of_gemm": achieved / gemm,
        "seconds": times,
    }
    if channels_last is not None:
        row["channels_last_speedup"] = statistics.median(times["step"]) / statistics.median(times["step_channels_last"])
    return row


def run_case(size: str, pixels: int, cached: bool, steps: int) -> dict:
    """Run :func:`measure` in a fresh Python process so that its peak memory is its own."""
    return in_fresh_process(__file__, "--case", size, str(pixels), str(int(cached)), "--steps", str(steps))


def table(rows: list[dict]) -> str:
    lines = [
        "| patch | features | s/step (median) | s/step (min) | cache build (s) | peak RSS (MiB) | extra RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cache = f"{r['cache_seconds']:.1f}" if r["cache_seconds"] is not None else "-"
        lines.append(
            f"| {r['pixels']}x{r['pixels']} | {'cached' if r['cached_features'] else 'backbone each step'} | "
            f"{r['seconds_median']:.2f} | {min(r['seconds']):.2f} | {cache} | {r['peak_rss_mib']:.0f} | "
            f"{r['extra_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="s", help="network and random backbone size (default s; e.g. b, l)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="patch sizes (multiples of 32)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case, after one warm-up (default 5)")
    parser.add_argument("--quick", action="store_true", help="256 only, 2 timed steps")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the efficiency runs (OMP_NUM_THREADS; default torch's own)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--efficiency-only", action="store_true", help="only the GFLOP/s against a GEMM")
    parser.add_argument(
        "--against",
        type=Path,
        help="another checkout of this repository (before/after): its engine's efficiency is measured too, "
        "in processes alternating with this one's, two of each per patch size",
    )
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "PIXELS", "CACHED"), help=argparse.SUPPRESS)  # worker
    args = parser.parse_args(argv)

    if args.case:
        size, pixels, cached = args.case[0], int(args.case[1]), args.case[2]
        if cached == "efficiency":
            print(json.dumps(measure_efficiency(size, pixels, args.steps)))
        else:
            print(json.dumps(measure(size, pixels, bool(int(cached)), args.steps)))
        return 0
    sizes, steps = ([256], 2) if args.quick else (args.sizes, args.steps)
    # as `dinounet train` does: idle OpenMP threads sleep (spinning ones ruin a shared machine; cli/train.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    load_start = os.getloadavg()[0]
    rows = (
        []
        if args.efficiency_only
        else [run_case(args.size, pixels, cached, steps) for pixels in sizes for cached in (False, True)]
    )
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}

    def efficiency_case(pixels: int, source: Path | None = None) -> dict:
        env = {**threads, "PYTHONPATH": str(source.resolve() / "src")} if source else threads
        case = ("--case", args.size, str(pixels), "efficiency", "--steps", str(steps))
        return {**in_fresh_process(__file__, *case, env=env or None), "engine": str(source) if source else "this"}

    if args.against:  # A B A B per size, so that both see the same load
        efficiency = [
            efficiency_case(pixels, source) for pixels in sizes for _ in range(2) for source in (args.against, None)
        ]
    else:
        efficiency = [efficiency_case(pixels) for pixels in sizes]
    load_end = os.getloadavg()[0]
    print(
        f"Dino U-Net {args.size.upper()} ({PROJECTION}, random:{args.size} backbone) training step, "
        f"batch {BATCH}, CPU, {steps} timed step(s)"
    )
    if rows:
        print(table(rows))
    for pixels in sizes if rows else ():
        plain, cached = (
            next(r for r in rows if r["pixels"] == pixels and r["cached_features"] == c) for c in (False, True)
        )
        print(
            f"{pixels}x{pixels}: speed-up from cached features (median step without / with): "
            f"{plain['seconds_median'] / cached['seconds_median']:.2f}"
        )
    for e in efficiency:
        print(
            f"{e['pixels']}x{e['pixels']} forward+backward with cached features ({e['engine']}): {e['gflop']:.1f} "
            f"GFLOP, {e['gflops']:.0f} GFLOP/s = {e['of_gemm']:.0%} of the GEMM's {e['gemm_gflops']:.0f} GFLOP/s"
            + (f"; channels-last heads {e['channels_last_speedup']:.2f}x" if "channels_last_speedup" in e else "")
        )
    for pixels in sizes if args.against else ():
        of_gemm = {e["engine"]: [] for e in efficiency}
        for e in efficiency:
            if e["pixels"] == pixels:
                of_gemm[e["engine"]].append(e["of_gemm"])
        this, other = statistics.median(of_gemm["this"]), statistics.median(of_gemm[str(args.against)])
        print(f"{pixels}x{pixels}: this engine {this:.0%} of GEMM, {args.against} {other:.0%} (medians of 2 processes)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load_start:.1f} at start, {load_end:.1f} at end"
    )
    result = {
        "network": {"size": args.size, "projection": PROJECTION, "num_classes": 2, "backbone": f"random:{args.size}"},
        "batch": BATCH,
        "device": "cpu",
        "timed_steps": steps,
        "cache_crops": CACHE_CROPS,
        "memory": "peak resident set size (resource.getrusage ru_maxrss) of a fresh process per case; "
        "extra = peak minus the peak after imports, data and model construction",
        "machine": machine(load_start, load_end, omp_wait_policy=os.environ["OMP_WAIT_POLICY"]),
        "results": rows,
        "efficiency": efficiency,
        "against": str(args.against) if args.against else None,
    }
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
