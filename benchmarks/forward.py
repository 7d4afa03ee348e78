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

from _common import in_fresh_process, machine, peak_rss_mib, write_json

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
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--case", nargs=2, metavar=("PIXELS", "MODE"), help=argparse.SUPPRESS)  # worker process
    args = parser.parse_args(argv)

    if args.case:
        print(json.dumps(measure(int(args.case[0]), args.case[1], args.repeats)))
        return 0
    sizes, repeats = ([256], 1) if args.quick else (args.sizes, args.repeats)

    import torch

    load_start = os.getloadavg()[0]
    rows = [run_case(pixels, mode, repeats) for pixels in sizes for mode in MODES]
    load_end = os.getloadavg()[0]
    print(f"Dino U-Net {SIZE.upper()} ({PROJECTION}, random:{SIZE} backbone), batch 1, CPU, {repeats} timed pass(es)")
    print(table(rows))
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
    }
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
