"""What the benchmark scripts share: peak memory, cases in fresh processes, the machine, the JSON file.

Imported as ``_common`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def in_fresh_process(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python script *args`` in a new process (so that its peak memory is its own) and return the
    JSON object it printed last; its stderr ends the benchmark if it fails."""
    done = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if done.returncode:
        raise SystemExit(f"{Path(script).name} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(load_start: float, load_end: float, **extra) -> dict:
    """The machine a run was measured on: platform, CPUs, torch and its threads, ``extra``, and the
    1-minute load average at the start and end (timings on a shared machine vary with it)."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }


GEMM_SIZE = 2048
GEMM_PER_ROUND = 4  # matmuls per GEMM timing: about as long as a 256x256 forward of S


def gemm_operands():
    """Two random (GEMM_SIZE, GEMM_SIZE) fp32 matrices for :func:`gemm_seconds`."""
    import torch

    return torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)


def gemm_seconds(a, b) -> float:
    """Seconds for GEMM_PER_ROUND products a @ b: the BLAS speed of this moment, timed between the passes
    of a benchmark so that both see the same load."""
    start = time.perf_counter()
    for _ in range(GEMM_PER_ROUND):
        a @ b
    return time.perf_counter() - start


def gemm_gflops(seconds: list[float]) -> float:
    """GFLOP/s of the GEMM from its timings (median)."""
    return GEMM_PER_ROUND * 2 * GEMM_SIZE**3 / statistics.median(seconds) / 1e9


def write_json(path: Path, result: dict) -> None:
    """Write ``result`` to ``path`` atomically (an interrupted run leaves the previous results)."""
    from napari_dinounet.engine.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")
