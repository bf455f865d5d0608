"""The ranks of a ``torchrun`` run: which process this is, and starting and ending the group.

With ``WORLD_SIZE > 1`` training runs under DistributedDataParallel (NCCL on CUDA, gloo on
CPU); each rank takes its share of every epoch's windows and only rank 0 (:attr:`Dist.main`)
writes files. Without it :func:`init_distributed` returns a world of one and nothing else runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """This process's place in the run: its rank among ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: Whether this run started the process group (and so ends it).
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join (or start) the process group when ``torchrun`` set ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local, owned)


def all_reduce(dist: Dist, *tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (nothing with a world of one)."""
    if not dist.active:
        return
    import torch.distributed as tdist

    for t in tensors:
        tdist.all_reduce(t)


def end_distributed(dist: Dist) -> None:
    """Wait for every rank, and end the process group when this run started it."""
    if not dist.active:
        return
    import torch.distributed as tdist

    tdist.barrier()
    if dist.owned:
        # Ended here, not at interpreter exit: gloo's threads, left running, abort a rank
        # on its way out ("terminate called without an active exception").
        tdist.destroy_process_group()
