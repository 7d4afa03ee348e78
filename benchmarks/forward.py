"""Forward and forward+backward time and peak memory of Dino U-Net S on the CPU (batch 1).

The network is the full model on the random ViT-S backbone (``random:s``: the same shapes and cost as
pretrained DINOv3 ViT-S/16) with the default FAPM projection and 2 classes. "forward" is inference:
eval mode under ``torch.inference_mode``. "forward+backward" is a training step without the optimiser:
train mode, a mean-of-logits loss, ``backward()`` into the heads (the backbone is frozen, as always).

Memory: every case runs in a fresh Python process, so its peak resident set size (``resource``
``ru_maxrss``) is its own. "peak" is that process peak; "extra" is the peak minus the peak after imports
and building the model, i.e. what the passes themselves needed. Time: the median of ``--repeats`` passes
after one untimed warm-up pass (oneDNN picks its kernels on the first pass at a new size), and the
fastest pass (the least disturbed by other work on a shared machine).

Efficiency: in one more process, the inference forward in the default memory layout and in
channels-last (``DinoUNet.use_channels_last``) and a 2048^3 fp32 GEMM run interleaved, ``--repeats``
rounds (GEMM, default, channels-last, GEMM, ...), so that all three see the same load on a shared
machine. Achieved GFLOP/s = the forward's FLOPs (``torch.utils.flop_counter``, a multiply-add counted
as 2) / its median time; "of GEMM" = that over the GEMM's median GFLOP/s: the fraction of what this
machine's BLAS reaches at that moment. The largest difference between the two layouts' logits, relative
to the logits' largest magnitude, is reported too.

    .venv/bin/python benchmarks/forward.py            # 256 and 512, 3 timed passes each
    .venv/bin/python benchmarks/forward.py --quick    # 256 only, 1 timed pass

Prints a Markdown table and writes JSON to benchmarks/results/forward.json (or --json). The machine
load (1-minute load average) at the start and end is recorded: timings on a shared machine vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import gemm_gflops, gemm_operands, gemm_seconds, in_fresh_process, machine, peak_rss_mib, write_json

SIZE = "s"
PROJECTION = "fapm"
CLASSES = 2
MODES = ("forward", "forward+backward")
RESULTS = Path(__file__).parent / "results" / "forward.json"


def measure(pixels: int, mode: str, repeats: int) -> dict:
    """Time ``repeats`` passes of ``mode`` at pixels x pixels in this process; return times and memory."""
    import warnings

    import torch

    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
        model = build_dinounet(SIZE, projection=PROJECTION, num_classes=CLASSES)
    x = torch.randn(1, 1, pixels, pixels)
    before = peak_rss_mib()

    def one_pass() -> float:
        start = time.perf_counter()
        if mode == "forward":
            model.eval()
            with torch.inference_mode():
                model(x)
        else:
            model.train()
            model.zero_grad(set_to_none=True)
            model(x).mean().backward()
        return time.perf_counter() - start

    one_pass()  # warm-up
    times = [one_pass() for _ in range(repeats)]
    peak = peak_rss_mib()
    return {
        "pixels": pixels,
        "mode": mode,
        "seconds_median": statistics.median(times),
        "seconds": times,
        "peak_rss_mib": round(peak, 1),
        "extra_rss_mib": round(peak - before, 1),
        "model_rss_mib": round(before, 1),
    }


def forward_flops(model, x) -> int:
    """FLOPs of one inference forward of ``model`` on ``x`` (a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops()


def measure_efficiency(pixels: int, repeats: int) -> dict:
    """Achieved GFLOP/s of the inference forward in both memory layouts, and of a GEMM, interleaved."""
    import copy
    import warnings

    import torch

    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
        default = build_dinounet(SIZE, projection=PROJECTION, num_classes=CLASSES).eval()
    layouts = {"default": default, "channels_last": copy.deepcopy(default).use_channels_last()}
    x = torch.randn(1, 1, pixels, pixels)
    a, b = gemm_operands()
    flops = forward_flops(default, x)
    times: dict[str, list[float]] = {"gemm": [], **{name: [] for name in layouts}}
    with torch.inference_mode():
        logits = {name: model(x) for name, model in layouts.items()}  # warm-up; oneDNN picks its kernels
        gemm_seconds(a, b)
        for _ in range(repeats):
            times["gemm"].append(gemm_seconds(a, b))
            for name, model in layouts.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    gemm = gemm_gflops(times["gemm"])
    row = {"pixels": pixels, "threads": torch.get_num_threads(), "gflop": flops / 1e9, "gemm_gflops": gemm}
    row["seconds"] = times
    for name in layouts:
        achieved = flops / statistics.median(times[name]) / 1e9
        row[name] = {"gflops": achieved, "of_gemm": achieved / gemm}
    reference = logits["default"]
    row["channels_last_max_relative_difference"] = float(
        (logits["channels_last"] - reference).abs().max() / reference.abs().max()
    )
    row["channels_last_speedup"] = statistics.median(times["default"]) / statistics.median(times["channels_last"])
    return row


def efficiency_table(rows: list[dict]) -> str:
    lines = [
        "| input | GFLOP | GEMM GFLOP/s | default GFLOP/s (of GEMM) | channels-last GFLOP/s (of GEMM) | "
        "speed-up | max rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, c = r["default"], r["channels_last"]
        lines.append(
            f"| {r['pixels']}x{r['pixels']} | {r['gflop']:.1f} | {r['gemm_gflops']:.0f} | "
            f"{d['gflops']:.0f} ({d['of_gemm']:.0%}) | {c['gflops']:.0f} ({c['of_gemm']:.0%}) | "
            f"{r['channels_last_speedup']:.2f} | {r['channels_last_max_relative_difference']:.1e} |"
        )
    return "\n".join(lines)


def run_case(pixels: int, mode: str, repeats: int) -> dict:
    """Run :func:`measure` in a fresh Python process so that its peak memory is its own."""
    return in_fresh_process(__file__, "--case", str(pixels), mode, "--repeats", str(repeats))


def table(rows: list[dict]) -> str:
    lines = [
        "| input | pass | time (s, median) | time (s, min) | peak RSS (MiB) | extra RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pixels']}x{r['pixels']} | {r['mode']} | {r['seconds_median']:.2f} | {min(r['seconds']):.2f} | "
            f"{r['peak_rss_mib']:.0f} | {r['extra_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="input sizes (multiples of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case (default 3)")
    parser.add_argument("--quick", action="store_true", help="256 only, one timed pass")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the efficiency runs (OMP_NUM_THREADS; default torch's own)"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--efficiency-only", action="store_true", help="only the GFLOP/s against a GEMM")
    parser.add_argument("--case", nargs=2, metavar=("PIXELS", "MODE"), help=argparse.SUPPRESS)  # worker process
    args = parser.parse_args(argv)

    if args.case:
        pixels, mode = int(args.case[0]), args.case[1]
        row = measure_efficiency(pixels, args.repeats) if mode == "efficiency" else measure(pixels, mode, args.repeats)
        print(json.dumps(row))
        return 0
    sizes, repeats = ([256], 1) if args.quick else (args.sizes, args.repeats)

    import torch

    load_start = os.getloadavg()[0]
    rows = [] if args.efficiency_only else [run_case(pixels, mode, repeats) for pixels in sizes for mode in MODES]
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    efficiency = [
        in_fresh_process(__file__, "--case", str(pixels), "efficiency", "--repeats", str(repeats), env=threads)
        for pixels in sizes
    ]
    load_end = os.getloadavg()[0]
    print(f"Dino U-Net {SIZE.upper()} ({PROJECTION}, random:{SIZE} backbone), batch 1, CPU, {repeats} timed pass(es)")
    if rows:
        print(table(rows))
    print("\nInference forward against a GEMM in the same process (interleaved, medians):")
    print(efficiency_table(efficiency))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load_start:.1f} at start, {load_end:.1f} at end"
    )
    result = {
        "network": {"size": SIZE, "projection": PROJECTION, "num_classes": CLASSES, "backbone": f"random:{SIZE}"},
        "batch": 1,
        "device": "cpu",
        "repeats": repeats,
        "memory": "peak resident set size (resource.getrusage ru_maxrss) of a fresh process per case; "
        "extra = peak minus the peak after imports and model construction",
        "machine": machine(load_start, load_end),
        "results": rows,
        "efficiency": efficiency,
    }
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
