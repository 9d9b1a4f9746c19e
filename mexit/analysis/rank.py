"""Numerical rank of representations: how many directions a layer's activations really use.

Definition (ours, following the threshold convention of the tunnel-effect analyses): flatten the
activations to a ``samples x features`` matrix, centre every feature over the samples, take its
singular values ``s_1 >= s_2 >= ...`` in float64; the numerical rank is the number of eigenvalues of
the covariance matrix above ``eig_threshold`` times the largest, that is of singular values with
``s_k**2 > eig_threshold * s_1**2`` (``s_k > sqrt(1e-3) s_1 ~ 0.032 s_1`` at the default).
Centring removes the mean direction, so the rank is at most ``min(samples - 1, features)``. Wide layers may keep a seeded random subset of their features; the
result says how many were used.

The effective rank (Roy & Vetterli, 2007) comes with it: ``exp(H(p))`` with ``p_k = s_k / sum_j s_j``
and ``H`` the Shannon entropy in nats; ``r`` equal non-zero singular values give ``r``. It needs no
threshold and does not saturate at the cap the way the thresholded count does (0 for constant
activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mexit.analysis.features import block_representations, feature_subset


@dataclass(frozen=True)
class RankResult:
    """The numerical rank of one activation matrix, its singular values and how it was measured."""

    rank: int
    effective_rank: float
    singular_values: Tensor
    eig_threshold: float
    samples: int
    features_used: int
    features_total: int

    @property
    def spectrum(self) -> Tensor:
        """Singular values divided by the largest (all zeros for constant activations)."""
        top = self.singular_values[0]
        return self.singular_values / top if top > 0 else torch.zeros_like(self.singular_values)

    @property
    def max_rank(self) -> int:
        """The largest rank this measurement could report: ``min(samples - 1, features_used)``."""
        return min(self.samples - 1, self.features_used)


def numerical_rank(
    activations: Tensor, eig_threshold: float = 1e-3, max_features: int | None = None, seed: int = 0
) -> RankResult:
    """Numerical rank of ``activations`` (``[samples, ...]``, flattened per sample); see the module doc."""
    if activations.ndim < 2 or activations.shape[0] < 2:
        raise ValueError(f"activations must be [samples >= 2, ...], got shape {tuple(activations.shape)}")
    if not 0 < eig_threshold < 1:
        raise ValueError(f"eig_threshold must be in (0, 1), got {eig_threshold}")
    matrix = activations.detach().flatten(1)
    total = matrix.shape[1]
    subset = feature_subset(total, max_features, seed)
    if subset is not None:
        matrix = matrix[:, subset.to(matrix.device)]
    matrix = matrix.double()
    matrix = matrix - matrix.mean(0, keepdim=True)
    values = torch.linalg.svdvals(matrix).cpu()
    rank = int((values.square() > eig_threshold * values[0].square()).sum()) if values[0] > 0 else 0
    return RankResult(rank, _effective_rank(values), values, eig_threshold, matrix.shape[0], matrix.shape[1], total)


def _effective_rank(singular_values: Tensor) -> float:
    """Roy & Vetterli's effective rank of a matrix from its singular values (0 if all are zero)."""
    total = singular_values.double().sum()
    if total <= 0:
        return 0.0
    p = singular_values.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def block_ranks(
    model: nn.Module,
    dataset: Dataset,
    samples: int = 1000,
    eig_threshold: float = 1e-3,
    max_features: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Numerical and effective rank of every block's output of a multi-exit model on a seeded sample of ``dataset``.

    ``max_features=None`` keeps half as many features as samples drawn (at least 1), so the matrix
    is tall and the rank is capped by the features kept, not by the sample. Columns: block
    (1-based), rank, effective_rank, max_rank, features_used, features_total, samples, eig_threshold.
    """
    if not 0 < eig_threshold < 1:
        raise ValueError(f"eig_threshold must be in (0, 1), got {eig_threshold}")
    if max_features is None:
        max_features = max(1, min(samples, len(dataset)) // 2)  # type: ignore[arg-type]
    reps = block_representations(model, dataset, samples, max_features, seed, batch_size)
    rows = []
    for block in reps.blocks:
        result = numerical_rank(block.features, eig_threshold)
        rows.append(
            {
                "block": block.block,
                "rank": result.rank,
                "effective_rank": result.effective_rank,
                "max_rank": result.max_rank,
                "features_used": result.features_used,
                "features_total": block.features_total,
                "samples": result.samples,
                "eig_threshold": eig_threshold,
            }
        )
    return pd.DataFrame(rows)
