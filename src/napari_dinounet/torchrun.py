"""``torchrun --nproc_per_node N -m napari_dinounet.torchrun ARGS``: ``dinounet train`` on N processes (DDP).

Takes exactly the arguments of ``dinounet train``. Each process joins the process group torchrun sets up
(NCCL on GPUs, one GPU per process, picked by LOCAL_RANK; gloo on CPU), then runs the same training:
data sharded by rank, gradients averaged, SyncBatchNorm on GPUs, checkpoints and the progress bar from
rank 0 only (see :mod:`napari_dinounet.engine.distributed`). Started without torchrun it trains on one process.
Prediction has its own entry point, :mod:`napari_dinounet.predict`, which joins the group the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


@contextlib.contextmanager
def process_group(argv: list[str]):
    """Join the process group torchrun set up (WORLD_SIZE > 1; else nothing), left again at the end.

    argv: the command's arguments, for its ``--device``: NCCL with this process's own GPU (LOCAL_RANK) when
    CUDA is there and asked for ("auto", "cuda"), else gloo on the CPU.
    """
    from .cli import passive_openmp_threads

    passive_openmp_threads()
    import torch
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        device_option = argparse.ArgumentParser(add_help=False)
        device_option.add_argument("--device", default="auto")
        device = device_option.parse_known_args(argv)[0].device
        use_cuda = torch.cuda.is_available() and device.startswith(("auto", "cuda"))
        if use_cuda:
            # "cuda" / "auto" in the engine then mean this process's own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield
    finally:
        if distributed:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    with process_group(argv):
        return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
