"""Inference over a dataset with a multi-exit model: every exit's logits, or its accuracy.

Training evaluates with these (early stopping, the stored logits) and so do the analyses; neither
needs the training loop for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from mexit.config import TrainConfig
from mexit.data.loading import batch_loader, in_order
from mexit.distributed import DistContext


@torch.no_grad()
def collect_logits(
    model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Every exit's logits on ``dataset`` in eval mode: ``([E, N, C] float32, [N] int64)`` on CPU."""
    was_training = model.training
    model.eval()
    outputs: list[Tensor] = []
    labels: list[Tensor] = []
    for images, targets in batch_loader(dataset, in_order(len(dataset), batch_size), num_workers):
        logits = model(images.to(device))
        outputs.append(torch.stack([out.float().cpu() for out in logits]))
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    return torch.cat(outputs, dim=1), torch.cat(labels)


def evaluation_split(dataset: Dataset, config: TrainConfig) -> Dataset:
    """What an evaluation reads of ``dataset``: all of it, or its first ``config.eval_batches``
    batches of ``config.eval_batch_size`` (a smoke run's evaluations)."""
    size = evaluation_size(len(dataset), config)  # type: ignore[arg-type]
    return dataset if size == len(dataset) else Subset(dataset, range(size))  # type: ignore[arg-type]


def evaluation_size(available: int, config: TrainConfig) -> int:
    """How many of ``available`` samples an evaluation reads (:func:`evaluation_split`)."""
    if config.eval_batches is None:
        return available
    return min(available, config.eval_batches * config.eval_batch_size)


@torch.no_grad()
def validation_accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    *,
    num_workers: int = 0,
    dist: DistContext | None = None,
) -> Tensor:
    """Accuracy (%) of every exit on ``dataset``, counted batch by batch (no logits kept).

    Under DDP (``dist``) each rank counts every ``world_size``-th sample from its rank on, with rank
    0's buffers (BatchNorm statistics), and the counts are summed: every rank gets the accuracy of
    one model on the whole split, for a ``world_size``-th of the work.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError("the validation split is empty")
    if dist is not None and dist.enabled:
        dist.share_buffers(model)
        dataset = Subset(dataset, range(dist.rank, size, dist.world_size))
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.num_exits if model.ics_active else 1, dtype=torch.float64)
    for images, targets in batch_loader(dataset, in_order(len(dataset), batch_size), num_workers):
        predictions = torch.stack([out.argmax(-1) for out in model(images.to(device))])
        correct += (predictions == torch.as_tensor(targets).to(device)).sum(1).cpu()
    model.train(was_training)
    if dist is not None:
        correct = dist.all_sum(correct)
    return correct / size * 100
