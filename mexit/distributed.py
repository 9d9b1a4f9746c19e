"""The process group: one process on CPU/GPU, or several under ``torchrun``.

``torchrun --nproc_per_node N -m mexit.cli train ...`` sets ``WORLD_SIZE``/``RANK``; the training loop
then wraps the model in DistributedDataParallel, gives each rank its share of every global batch and
lets only rank 0 write to the run store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def context(device: str = "auto") -> DistContext:
    """The current process's context, initialising the process group under ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            resolved = torch.device("cuda", local)
        else:
            resolved = torch.device("cpu")
    else:
        resolved = torch.device(device)
    return DistContext(rank=rank, world_size=world_size, device=resolved)
