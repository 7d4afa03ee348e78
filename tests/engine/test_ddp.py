"""DistributedDataParallel training: 2 CPU processes with gloo, and the torchrun entry point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import torch
from _nuclei_training import nuclei_samples, write_nuclei_folders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """One DDP process: train a tiny model on its shard, save its heads and its losses."""
    import warnings

    import torch.distributed as dist
    from safetensors.torch import save_file

    from napari_dinounet.engine.train import TrainSettings, train

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from napari_dinounet.engine.backbone import load_backbone
        from napari_dinounet.engine.train import build_model

        backbone = load_backbone("random:tiny")
        settings = TrainSettings(
            size="tiny", patch_size=64, batch_size=2, epochs=2, iters_per_epoch=12, val_crops=2, lr=3e-3, seed=5
        )
        model = build_model(backbone, settings, num_classes=2, in_channels=1)
        with torch.no_grad():  # different initial heads per rank: DDP must make them equal
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * rank * torch.randn_like(p))
        losses: dict[int, float] = {}  # per step (an epoch's end repeats its last step with the epoch mean)
        samples = nuclei_samples([(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512))])
        run = train(
            samples,
            validation=[],
            out=os.path.join(out_dir, "heads.safetensors"),
            backbone=backbone,
            settings=settings,
            model=model,
            device="cpu",
        )
        while True:
            try:
                event = next(run)
            except StopIteration:
                break
            if "loss" in event.metrics:
                losses.setdefault(event.done, event.metrics["loss"])
        state = {k: v.contiguous() for k, v in model.heads_state_dict().items()}
        save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
        np.save(os.path.join(out_dir, f"losses{rank}.npy"), np.array([losses[k] for k in sorted(losses)]))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_end_with_identical_weights_and_a_falling_loss(tmp_path):
    from safetensors.torch import load_file

    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    heads = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert heads[0].keys() == heads[1].keys() and len(heads[0]) > 10
    for name in heads[0]:
        assert torch.equal(heads[0][name], heads[1][name]), name
    # only rank 0 writes: the heads checkpoint and its resume state, nothing from rank 1
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("rank", "losses")))
    assert written == ["heads.safetensors", "heads.state.safetensors"]
    for rank in range(2):
        losses = np.load(tmp_path / f"losses{rank}.npy")
        assert len(losses) == 24
        assert losses[-6:].mean() < 0.8 * losses[:6].mean(), losses


def test_torchrun_entry_point_trains_on_two_processes(tmp_path):
    images, labels = write_nuclei_folders(tmp_path)
    out = tmp_path / "ddp.safetensors"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "napari_dinounet.torchrun",
        "--backbone",
        "random:tiny",
        "--size",
        "tiny",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--patch",
        "64",
        "--batch",
        "2",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1  # rank 0 reports, rank 1 stays quiet
    from napari_dinounet.engine.checkpoint import read_metadata

    history = read_metadata(out).training["history"]
    assert [h["step"] for h in history] == [3]
