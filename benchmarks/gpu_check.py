"""The prepared GPU check (run by benchmarks/gpu_check.sh): what a lent data-centre GPU should show in < 5 min.

1. bf16 against fp32: the Dino U-Net S logits of random tiles (largest difference relative to the
   logits' largest magnitude, label agreement) and a whole prediction of the bundled nuclei image (label
   agreement). fp32 means the backbone without its CUDA bf16 autocast (its ViT called directly) and the
   heads without autocast; bf16 is what ``predict`` runs on CUDA.
2. Tiles per second of the S, B and L networks at 512 x 512 under bf16 autocast (batch 8, inference).
3. The backbone's achieved TFLOP/s (``torch.utils.flop_counter``; a multiply-add counts 2) and that as a
   fraction of the GPU's dense bf16 peak, from :data:`PEAK_BF16_TFLOPS` by device name (None when the
   device is not in the table).
4. Fine-tune steps per second (``engine.train.train`` on the bundled nuclei image, S, 512, batch 8) with
   and without cached backbone features (benchmarks/train_step.py's measurement).
5. A ``torchrun --nproc_per_node 1 -m napari_dinounet.torchrun`` training smoke run (3 steps) whose
   checkpoint is read back.

Random backbone weights only (``random:<size>``): nothing is downloaded. Writes
benchmarks/results/gpu_<device>.json (or --json). ``--dry-run`` runs the same code paths on the CPU at
tiny sizes (the tiny network, 64-pixel tiles, one timed pass each) and writes nothing unless --json
is given: CI runs it (tests/test_gpu_check.py) so that the check still works when a GPU is lent.

    benchmarks/gpu_check.sh               # on the GPU machine
    benchmarks/gpu_check.sh --dry-run     # anywhere, in about a minute
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from _common import machine, write_json

RESULTS = Path(__file__).parent / "results"

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; matched in this
# order against torch.cuda.get_device_name() (the first key found in it, case-insensitive).
PEAK_BF16_TFLOPS = {
    "GH200": 989.0,
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H800": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "A30": 165.0,
}


@dataclass(frozen=True)
class Sizes:
    """What the check runs: the real sizes on a GPU, tiny ones for the dry run."""

    networks: tuple[str, ...]
    agreement_network: str
    tile: int
    batch: int
    timed: int  # timed passes per throughput figure
    train_patch: int
    train_batch: int
    train_steps: int


GPU_SIZES = Sizes(("s", "b", "l"), "s", 512, 8, 10, 512, 8, 10)
DRY_SIZES = Sizes(("tiny",), "tiny", 64, 2, 1, 64, 2, 1)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name``, or None when it is not in the table."""
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def build(size: str, device):
    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
        return build_dinounet(size, num_classes=2).to(device).eval()


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fp32_logits(model, x):
    """Logits (B, nc, H, W) with every part in fp32: the ViT is called directly (Backbone.features would
    run it under bf16 autocast on CUDA), then the heads without autocast."""
    import torch

    backbone = model.backbone
    wanted = sorted(set(model.config.taps))
    with torch.autocast(x.device.type, enabled=False):
        maps = backbone.vit.forward_intermediates(
            model.to_three_channels(x),
            indices=wanted,
            norm=True,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        by_block = dict(zip(wanted, maps))
        return model(x, taps=[by_block[b].float() for b in model.config.taps])


class Fp32Network(torch.nn.Module):
    """A network whose forward is :func:`fp32_logits`, for a whole fp32 prediction through ``predict``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return fp32_logits(self.model, x)


def agreement(sizes: Sizes, device) -> dict:
    """bf16 against fp32: network logits on random tiles and a whole prediction of the nuclei image."""
    import numpy as np

    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.predict import predict
    from napari_dinounet.engine.progress import drain

    model = build(sizes.agreement_network, device)
    x = torch.randn(sizes.batch, 1, sizes.tile, sizes.tile, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        full = fp32_logits(model, x)
        with bf16(device):
            half = model(x).float()
    image = load_nuclei()[0]
    if device.type != "cuda":  # the dry run: a crop of 3 tiles, and bf16 through CPU autocast
        image = image[: sizes.tile, : 2 * sizes.tile]
    labels_fp32 = drain(predict(Fp32Network(model), image, patch_size=sizes.tile, device=device))
    if device.type == "cuda":
        labels_bf16 = drain(predict(model, image, patch_size=sizes.tile, device=device))
    else:
        with bf16(device):
            labels_bf16 = drain(predict(model, image, patch_size=sizes.tile, device=device))
    return {
        "network": sizes.agreement_network,
        "tile": sizes.tile,
        "logits_max_relative_difference": float((half - full).abs().max() / full.abs().max()),
        "tile_labels_agree": float((half.argmax(1) == full.argmax(1)).float().mean()),
        "prediction_image": list(image.shape),
        "prediction_labels_agree": float(np.mean(labels_bf16 == labels_fp32)),
    }


def seconds_per_call(fn, device, timed: int) -> float:
    """Median seconds of ``fn()`` over ``timed`` calls after one warm-up."""
    fn()
    synchronize(device)
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(sizes: Sizes, device) -> list[dict]:
    """Per network size: tiles/s of the whole network under bf16, the backbone's achieved TFLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    rows = []
    for size in sizes.networks:
        model = build(size, device)
        x = torch.randn(sizes.batch, 1, sizes.tile, sizes.tile, device=device)
        x3 = model.to_three_channels(x)
        with torch.inference_mode(), bf16(device):
            network = seconds_per_call(partial(model, x), device, sizes.timed)
            backbone_pass = partial(model.backbone.features, x3, model.config.taps)
            backbone = seconds_per_call(backbone_pass, device, sizes.timed)
            counter = FlopCounterMode(display=False)
            with counter:
                backbone_pass()
        tflops = counter.get_total_flops() / backbone / 1e12
        rows.append(
            {
                "network": size,
                "tile": sizes.tile,
                "batch": sizes.batch,
                "tiles_per_second": sizes.batch / network,
                "backbone_seconds_per_batch": backbone,
                "backbone_tflop_per_batch": counter.get_total_flops() / 1e12,
                "backbone_tflops": tflops,
                "peak_bf16_tflops": peak,
                "backbone_fraction_of_peak": tflops / peak if peak else None,
            }
        )
        del model, backbone_pass
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def finetune(sizes: Sizes, device) -> list[dict]:
    """Steps per second of the real training loop, without and with cached features."""
    from train_step import measure

    size = sizes.agreement_network
    rows = []
    for cached in (False, True):
        row = measure(size, sizes.train_patch, cached, sizes.train_steps, device=str(device), batch=sizes.train_batch)
        rows.append(
            {
                "network": size,
                "patch": sizes.train_patch,
                "batch": sizes.train_batch,
                "cached_features": cached,
                "steps_per_second": 1 / row["seconds_median"],
                "cache_seconds": row["cache_seconds"],
            }
        )
    return rows


def torchrun_smoke(sizes: Sizes, device) -> dict:
    """``torchrun --nproc_per_node 1 -m napari_dinounet.torchrun`` for 3 steps; the checkpoint read back."""
    import tifffile

    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.checkpoint import read_metadata

    image, labels = load_nuclei()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, array in (("images", image), ("labels", (labels > 0).astype("uint8"))):
            (root / name).mkdir()
            for i, cols in enumerate((slice(0, 256), slice(256, 512))):
                tifffile.imwrite(root / name / f"crop{i}.tif", array[:256, cols])
        out = root / "heads.safetensors"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone",
            "-m", "napari_dinounet.torchrun",
            "--backbone", f"random:{sizes.agreement_network}", "--images", str(root / "images"),
            "--labels", str(root / "labels"), "--out", str(out), "--patch", str(min(sizes.train_patch, 256)),
            "--batch", "2", "--epochs", "1", "--iters-per-epoch", "3", "--device", device.type, "--quiet",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"torchrun smoke run failed:\n{done.stderr[-3000:]}")
        history = read_metadata(out).training["history"]
    return {"command": " ".join(command[1:]), "seconds": seconds, "steps": [h["step"] for h in history]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/gpu_*.json)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, sizes, name = torch.device("cpu"), DRY_SIZES, "cpu (dry run)"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here: run with --dry-run to check the script on the CPU")
        device, sizes, name = torch.device("cuda"), GPU_SIZES, torch.cuda.get_device_name()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the agreement figures
    torch.backends.cudnn.allow_tf32 = False
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    result = {"device": name, "dry_run": args.dry_run, "sizes": sizes.__dict__}
    for part, run in (
        ("bf16_agreement", agreement),
        ("throughput", throughput),
        ("finetune", finetune),
        ("torchrun_smoke", torchrun_smoke),
    ):
        part_start = time.perf_counter()
        result[part] = run(sizes, device)
        print(f"{part} ({time.perf_counter() - part_start:.0f} s): {result[part]}", flush=True)
    result["seconds"] = time.perf_counter() - start
    result["machine"] = machine(load_start, os.getloadavg()[0], cuda=torch.version.cuda)
    print(f"done in {result['seconds']:.0f} s")
    out = args.json
    if out is None and not args.dry_run:
        out = RESULTS / f"gpu_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.json"
    if out is not None:
        write_json(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
