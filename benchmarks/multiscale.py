"""Segmenting a 16k x 16k multiscale image on the CPU with the tiny random backbone: time and peak memory
per level, and the time of the visible region at level 0.

The image is lazy: six dask levels (16384^2 down to 512^2, uint16) computed chunk by chunk from a pattern
(bright squares on a ramp), never stored whole, as napari-ome-zarr's levels are read from disk chunk by chunk.
Each level is segmented in a fresh process (its peak RSS is its own) by ``Predictor.predict`` with heads for
``random:tiny`` (tile 512, step 0.5, batch 4, one torch thread): the statistics pass over the whole level,
then tiles. Levels of at most ``--max-complete`` tiles (default 1000: levels 1-5) run to the end and their
time is measured. Level 0 is 3969 tiles, about 1.5 hours on one core of this 2-core CPU, so by default it runs
``--tiles`` tiles (default 126: two full band rows of tiles, so the peak covers a band being dropped and the
next one read) and stops (closing the generator, as Cancel does); its time is EXTRAPOLATED: statistics
time + (time per tile measured) x (its tiles), and its peak adds the labels not yet written (1 byte per pixel;
np.empty's untouched pages are not resident); rows marked "*" say so. The visible region is a 1024 x 1024
crop of level 0 (a screen's worth), segmented whole. ``statistics_s`` is the first batch's time less the
per-tile time of the rest: what the extrapolation needs; on whole levels it is only a rough split. Prints a
table; writes benchmarks/results/multiscale.json.

    PYTHONPATH=src OMP_WAIT_POLICY=PASSIVE python benchmarks/multiscale.py [--tiles 126] [--max-complete 1000]
    PYTHONPATH=src OMP_WAIT_POLICY=PASSIVE python benchmarks/multiscale.py --levels 0 --max-complete 4000

The second runs level 0 whole (measured, not extrapolated) and keeps the other levels' rows from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import in_fresh_process, machine, peak_rss_mib, write_json

SIDE = 16384
LEVELS = 6
TILE = 512
REGION = 1024
CHUNK = 1024


def lazy_levels():
    """The six dask levels, finest first: level k is the pattern sampled every 2**k pixels."""
    import dask.array as da
    import numpy as np

    def level(k: int):
        side = SIDE >> k
        chunk = min(CHUNK, side)

        def block(block_info=None):
            (y0, y1), (x0, x1) = block_info[None]["array-location"]
            yy = (np.arange(y0, y1, dtype=np.int64) << k)[:, None]
            xx = (np.arange(x0, x1, dtype=np.int64) << k)[None, :]
            return (((yy // 700 + xx // 700) % 2) * 2000 + (yy + xx) % 300).astype(np.uint16)

        return da.map_blocks(block, chunks=((chunk,) * (side // chunk),) * 2, dtype=np.uint16)

    return [level(k) for k in range(LEVELS)]


def tile_count(side: int) -> int:
    """Tiles of a square level of ``side`` pixels at tile TILE, step 0.5, as the tiler lays them."""
    from napari_dinounet.engine.tiling import tile_starts

    return len(tile_starts(side, TILE, 0.5)) ** 2


def worker(heads: str, level: int, max_tiles: int, region: bool) -> dict:
    """Segment ``level`` (or the visible region of level 0): the whole of it when ``max_tiles`` is 0, else
    until ``max_tiles`` tiles have run."""
    import numpy as np
    import torch

    from napari_dinounet.engine.predictor import Predictor

    torch.set_num_threads(1)
    image = lazy_levels()[level]
    if region:
        image = image[SIDE // 2 : SIDE // 2 + REGION, SIDE // 2 : SIDE // 2 + REGION]
    predictor = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    baseline = peak_rss_mib()
    gen = predictor.predict(image, tile=TILE, step=0.5)
    start = time.perf_counter()
    tiles_total = next(gen).total  # "image statistics", before the statistics pass
    first = next(gen)  # the statistics pass and the first tile batch
    after_first, first_tiles, done, labels = time.perf_counter(), first.done, first.done, None
    try:
        while max_tiles == 0 or done < max_tiles:
            done = next(gen).done
    except StopIteration as stop:
        (labels,) = stop.value
    end = time.perf_counter()
    gen.close()
    peak = peak_rss_mib()
    pixels = int(np.prod(image.shape))
    complete = labels is not None
    tile_s = (end - after_first) / max(done - first_tiles, 1)  # batches after the first
    stats_s = after_first - start - tile_s * first_tiles
    return {
        "level": level,
        "shape": list(image.shape),
        "tiles": tiles_total,
        "tiles_run": done,
        "complete": complete,
        "statistics_s": round(stats_s, 2),
        "seconds_per_tile": round(tile_s, 3),
        "time_s": round(end - start if complete else stats_s + tile_s * tiles_total, 1),
        "peak_extra_mib": round(peak - baseline + (0 if complete else pixels / 2**20), 1),
        "labels_mib": round(pixels / 2**20, 1),
        "level_uint16_mib": round(2 * pixels / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=126, help="tiles run on a level too big to run whole")
    parser.add_argument("--max-complete", type=int, default=1000, help="levels of at most this many tiles run whole")
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=list(range(LEVELS)),
        help="levels to run; the other levels' rows are kept from the existing results file",
    )
    parser.add_argument("--worker", nargs=4, metavar=("HEADS", "LEVEL", "TILES", "REGION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        heads, level, tiles, region = args.worker
        print(json.dumps(worker(heads, int(level), int(tiles), region == "1")))
        return
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from _widget_helpers import write_tiny_heads

    out = Path(__file__).parent / "results" / "multiscale.json"
    kept = []  # rows of levels not run now, as an earlier run measured them (each row keeps its own machine)
    if set(args.levels) != set(range(LEVELS)) and out.exists():
        earlier = json.loads(out.read_text())
        kept = [dict(row, machine=row.get("machine", earlier["machine"])) for row in earlier["levels"]]
        kept = [row for row in kept if row["level"] not in args.levels]
    load_start = os.getloadavg()[0]
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as folder:
        heads = str(write_tiny_heads(Path(folder) / "heads.safetensors", patch_size=TILE))
        rows = []
        for level in sorted(args.levels, reverse=True):
            tiles = 0 if tile_count(SIDE >> level) <= args.max_complete else args.tiles  # 0: the whole level
            rows.append(in_fresh_process(__file__, "--worker", heads, str(level), str(tiles), "0", env=env))
            print(rows[-1], flush=True)
        rows += kept
        visible = in_fresh_process(__file__, "--worker", heads, "0", "0", "1", env=env)
    print(f"\n{'level':>5} {'shape':>13} {'tiles':>6} {'time':>10} {'s/tile':>7} {'peak MiB':>9} {'level MiB':>9}")
    for row in sorted(rows, key=lambda r: r["level"]):
        shape = "x".join(map(str, row["shape"]))
        mark = "" if row["complete"] else " *"
        print(
            f"{row['level']:>5} {shape:>13} {row['tiles']:>6} {row['time_s']:>8.0f}s{mark:<2}"
            f"{row['seconds_per_tile']:>6.2f} {row['peak_extra_mib']:>9.0f} {row['level_uint16_mib']:>9.0f}"
        )
    seen = f"{visible['time_s']:.0f} s, peak {visible['peak_extra_mib']:.0f} MiB"
    print(f"visible {REGION}x{REGION} region at level 0: {seen}")
    if not all(row["complete"] for row in rows):
        print(f"* extrapolated from {args.tiles} tiles and the measured statistics pass (see the docstring)")
    result = {
        "benchmark": "multiscale",
        "image": f"{SIDE}x{SIDE} uint16, {LEVELS} lazy dask levels",
        "backbone": "random:tiny",
        "tile": TILE,
        "step": 0.5,
        "levels": sorted(rows, key=lambda r: r["level"]),
        "visible_region_level0": visible,
        "machine": machine(load_start, os.getloadavg()[0]),
    }
    write_json(out, result)


if __name__ == "__main__":
    main()
