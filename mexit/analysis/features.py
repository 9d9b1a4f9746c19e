"""Every block's representation of a seeded sample of a dataset, flattened and feature-subsampled.

A block's output is flattened per sample whatever its layout: a ResNet feature map ``[C, H, W]``
becomes ``C*H*W`` features, a ViT token map ``[tokens, D]`` (class token included) ``tokens*D``.
Wide layers keep a seeded random subset of ``max_features`` of those features, the same subset for
every sample, chosen before any activation is stored, so memory stays ``samples x max_features``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mexit.data.loading import sample_indices


@dataclass
class BlockFeatures:
    """One block's flattened representations of the sample: ``features`` is ``[samples, features_used]``."""

    block: int
    features: Tensor
    features_total: int

    @property
    def features_used(self) -> int:
        return self.features.shape[1]


@dataclass
class Representations:
    """Every block's features of one sample of a dataset, and its labels."""

    blocks: list[BlockFeatures]
    labels: Tensor

    @property
    def samples(self) -> int:
        return len(self.labels)


def feature_subset(total: int, max_features: int | None, seed: int) -> Tensor | None:
    """Sorted indices of a seeded random subset of ``max_features`` of ``total`` features, or None for all."""
    if max_features is not None and max_features < 1:
        raise ValueError(f"max_features must be >= 1 or None, got {max_features}")
    if max_features is None or max_features >= total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:max_features].sort().values


@torch.no_grad()
def block_representations(
    model: nn.Module,
    dataset: Dataset,
    samples: int = 1000,
    max_features: int | None = 4096,
    seed: int = 0,
    batch_size: int = 256,
) -> Representations:
    """Flattened outputs of every block of a :class:`~mexit.models.MultiExit` on a seeded sample.

    The model runs in eval mode (restored afterwards) on its own device; results are float32 on CPU.
    At most ``samples`` items are drawn (all of a smaller dataset).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    feature_subset(1, max_features, seed)  # validates max_features before any work
    indices = sample_indices(len(dataset), samples, seed)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks: list[list[Tensor]] = []
    subsets: list[Tensor | None] = []
    totals: list[int] = []
    labels: list[Tensor] = []
    for images, targets in DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size):
        outputs = [out.flatten(1).float() for out in model.forward_blocks(images.to(device))]
        if not chunks:
            totals = [out.shape[1] for out in outputs]
            subsets = [feature_subset(total, max_features, seed + block) for block, total in enumerate(totals)]
            chunks = [[] for _ in outputs]
        for chunk, out, subset in zip(chunks, outputs, subsets):
            chunk.append((out if subset is None else out[:, subset.to(device)]).cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    blocks = [
        BlockFeatures(block=index + 1, features=torch.cat(chunk), features_total=total)
        for index, (chunk, total) in enumerate(zip(chunks, totals))
    ]
    return Representations(blocks=blocks, labels=torch.cat(labels))
