"""Training on several processes (``torchrun``, see :mod:`napari_dinounet.torchrun`): DDP over the heads.

When ``torch.distributed`` is initialised, :func:`.train.train` wraps the model in DistributedDataParallel
(:func:`wrap_distributed`: the frozen backbone is left out of the synchronisation, the heads' BatchNorm
becomes SyncBatchNorm on CUDA), each rank samples patches from its own shard of the training images
(:class:`.data.PatchSampler`), and only rank 0 writes files. PyTorch's SyncBatchNorm needs a GPU: on CPU
(gloo) each rank normalises with its own batch statistics and the running statistics are taken from rank 0
(DDP broadcasts them before every forward, and :func:`broadcast_head_buffers` again before validating and
saving), so all ranks always hold identical weights.

Prediction on several processes (``torchrun -m napari_dinounet.predict``) needs no wrapper: each rank
predicts its share of the files or slices (:func:`share_of`), and a volume's slices are gathered on rank 0
(:func:`gather_to_first`), which writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_device(device: torch.device, world_size: int) -> torch.device:
    """The device this process trains on: with several processes, "cuda" means its own GPU (set by the
    launcher, :mod:`napari_dinounet.torchrun`)."""
    if world_size > 1 and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def backbone_names(model) -> list[str]:
    """The names of the backbone's parameters and buffers (``backbone.*``): what DDP must not synchronise."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return [n for n in names if n.startswith("backbone.")]


def wrap_distributed(model, device: torch.device):
    """Prepare ``model`` for DDP: SyncBatchNorm heads on CUDA, backbone left out of the synchronisation.

    Returns the module to call in training steps (the DDP wrapper; ``model`` itself is trained in place).
    """
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        for name, child in list(model.named_children()):
            if name != "backbone":
                setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, backbone_names(model))
    # heads this configuration never calls (deep-supervision outputs when it is off) get no gradient
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(model.unused_parameter_names()),
    )


def broadcast_head_buffers(model) -> None:
    """Give every rank rank 0's BatchNorm running statistics (they drift apart without SyncBatchNorm)."""
    skip = set(backbone_names(model))
    for name, buffer in model.named_buffers():
        if name not in skip:
            torch.distributed.broadcast(buffer, src=0)


def share_of(items: Sequence[T]) -> list[T]:
    """This process's share of ``items`` for prediction on several processes (:mod:`napari_dinounet.predict`):
    every world-size-th one from its rank on, all of them on one process. With several processes it waits
    until every rank has got here first, so that none writes an output before all have checked theirs."""
    rank, world_size = rank_and_world_size()
    if world_size > 1:
        torch.distributed.barrier()
    return list(items[rank::world_size])


def gather_to_first(value):
    """``value`` of every rank, in rank order, on rank 0 (``torch.distributed.gather_object``); None on the
    others. On one process: ``[value]``."""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [value]
    gathered = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object(value, gathered, dst=0)
    return gathered
