"""Where a process runs: its rank in a ``torchrun`` job, the process group, and its device.

Under ``torchrun`` (``WORLD_SIZE`` > 1) training joins a process group (NCCL on CUDA, gloo on
CPU) for DistributedDataParallel; a plain process is rank 0 of 1 and joins nothing. Rank ``r``
uses the GPU of its local rank. Inference uses :func:`resolve_device` alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cesynth.io import InputError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) distributed run.

    Args:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


@contextlib.contextmanager
def distributed_group(context: DistContext, device: torch.device) -> Iterator[None]:
    """Join the process group for the run (if not joined yet) and leave it afterwards."""
    created = context.enabled and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=context.rank, world_size=context.world_size)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def resolve_device(name: str, context: DistContext) -> torch.device:
    """The torch device for a ``device`` setting (``cuda`` picks the local rank's GPU)."""
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError("device", "cuda requested but no CUDA device is available")
    return torch.device("cuda", context.local_rank) if use_cuda else torch.device("cpu")


__all__ = ["DistContext", "distributed_group", "resolve_device"]
