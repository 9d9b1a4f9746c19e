"""The process group: one process on CPU/GPU, or several under ``torchrun``.

``torchrun --nproc_per_node N -m mexit.cli train ...`` sets ``WORLD_SIZE``/``RANK``; the training loop
then wraps the model in DistributedDataParallel, gives each rank its share of every global batch and
lets only rank 0 write to the run store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of every rank's ``values`` (a CPU tensor), on every rank, on CPU."""
        if not self.enabled:
            return values
        total = values.to(self.device)
        dist.all_reduce(total)
        return total.cpu()

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), so that all evaluate one model."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)


def context(device: str = "auto") -> DistContext:
    """The current process's context, initialising the process group under ``torchrun``.

    ``auto`` and ``cuda`` mean this process's GPU (``cuda:$LOCAL_RANK``) when CUDA is available.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        requested = torch.device("cuda" if device == "auto" else device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if requested.type == "cuda" and not torch.cuda.is_available():
        if device != "auto":
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use auto or cpu")
        requested = torch.device("cpu")
    resolved = requested
    if requested.type == "cuda":
        resolved = requested if requested.index is not None else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    return DistContext(rank=rank, world_size=world_size, device=resolved)
