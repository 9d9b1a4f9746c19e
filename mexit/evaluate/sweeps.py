"""Offline early-exit sweeps over stored per-exit logits: confidence thresholds, patience, single exits.

Every sweep returns one row per operating point with the same columns:

- ``threshold`` (or ``patience``): the operating point, rows in increasing order; raising either
  never lets a sample leave earlier, so ``cost_macs`` is non-decreasing down the rows;
- ``cost_macs``: expected cost per sample, sum over exits of ``costs[i] * exit_share_i`` (MACs);
- ``cost_pct``: ``cost_macs`` as % of ``backbone_cost`` (the backbone-only model's MACs);
- ``accuracy``: accuracy (%) of the prediction of the exit each sample leaves at;
- ``exit_share_0`` .. ``exit_share_{E-1}``: fraction (0..1) of samples leaving at each exit.

Exit shares are wide columns of the same frame (one frame per sweep, one row per operating point).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RULES: tuple[str, ...] = ("maxprob", "entropy", "margin")
GRIDS: tuple[str, ...] = ("paper", "dense")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array, a torch tensor or a list of per-exit arrays/tensors."""
    if isinstance(x, (list, tuple)):
        return np.stack([to_numpy(a) for a in x])
    if hasattr(x, "detach"):  # a torch tensor; torch itself is not needed here
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_exit_arrays(
    logits: Any, labels: Any, costs: Any, backbone_cost: float, *, name: str = "logits"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Validate and convert the inputs of a sweep: logits [E, N, C], labels [N], costs [E]."""
    logits = to_numpy(logits)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"{name} must have shape [E exits, N samples, C classes], got {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")
    n_exits, n, n_classes = logits.shape
    labels = check_labels(labels, n, n_classes, name=name)
    costs = check_costs(costs, n_exits)
    if not np.isfinite(backbone_cost) or backbone_cost <= 0:
        raise ValueError(f"backbone_cost must be a positive number of MACs, got {backbone_cost}")
    return logits, labels, costs, float(backbone_cost)


def check_labels(labels: Any, n: int, n_classes: int, *, name: str = "logits") -> np.ndarray:
    """Validate labels: integers in [0, C), one per sample of ``name``."""
    labels = to_numpy(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must have shape [N] with N = {n} samples as in {name}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}) for C = {n_classes} classes")
    return labels


def check_costs(costs: Any, n_exits: int) -> np.ndarray:
    """Validate per-exit cumulative costs: E positive values, strictly increasing with depth."""
    costs = to_numpy(costs).astype(np.float64)
    if costs.shape != (n_exits,):
        raise ValueError(f"costs must have one value per exit (E = {n_exits}), got shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or costs[0] <= 0 or np.any(np.diff(costs) <= 0):
        raise ValueError(f"costs must be positive and strictly increasing with depth, got {costs.tolist()}")
    return costs


def threshold_grid(grid: str = "paper") -> np.ndarray:
    """Confidence thresholds: ``"paper"`` = ``linspace(0, 1, 100)``; ``"dense"`` adds 1 - 10^-k, k = 2..6."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    thresholds = np.linspace(0.0, 1.0, 100)
    if grid == "dense":
        thresholds = np.union1d(thresholds, 1.0 - 10.0 ** -np.arange(2, 7))
    return thresholds


def check_thresholds(thresholds: Any | None, grid: str) -> np.ndarray:
    """Sorted unique thresholds in [0, 1]; ``thresholds``, when given, replace the ``grid``."""
    if thresholds is None:
        return threshold_grid(grid)
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any((thresholds < 0) | (thresholds > 1)):
        raise ValueError("thresholds must be a non-empty 1-D sequence of values in [0, 1]")
    return np.unique(thresholds)


def confidences(logits: Any, rule: str = "maxprob") -> tuple[np.ndarray, np.ndarray]:
    """Per-exit confidence in [0, 1] and predicted class, both [E, N].

    ``"maxprob"``: the largest softmax probability. ``"entropy"``: 1 - H(p) / log C, with H the
    Shannon entropy of the softmax (1 = one-hot, 0 = uniform). ``"margin"``: the largest softmax
    probability minus the second largest (1 = one-hot, 0 = a tie at the top).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    logits = to_numpy(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [E exits, N samples, C classes], got {logits.shape}")
    n_exits, n, n_classes = logits.shape
    if rule == "entropy" and n_classes < 2:
        raise ValueError("rule='entropy' needs at least 2 classes")
    conf = np.empty((n_exits, n))
    preds = np.empty((n_exits, n), dtype=np.int64)
    for e in range(n_exits):  # one exit at a time keeps memory at N x C
        z = logits[e]
        preds[e] = z.argmax(axis=-1)
        shifted = z - np.take_along_axis(z, preds[e][:, None], axis=-1)
        unnorm = np.exp(shifted)  # the top class contributes exactly 1
        total = unnorm.sum(axis=-1, dtype=np.float64)
        if rule == "maxprob":
            conf[e] = 1.0 / total
        elif rule == "margin":
            second = np.partition(unnorm, -2, axis=-1)[:, -2] if n_classes > 1 else np.zeros(n)
            conf[e] = (1.0 - second) / total
        else:
            entropy = np.log(total) - (unnorm * shifted).sum(axis=-1, dtype=np.float64) / total
            conf[e] = np.clip(1.0 - entropy / np.log(n_classes), 0.0, 1.0)
    return conf, preds


def leaving_exit(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The exit each sample leaves at, [N], from per-exit ``scores`` [E, N] (:func:`confidences`):
    the first whose score is strictly above ``threshold``, else the final exit (as :func:`sweep`)."""
    above = np.asarray(scores) > threshold
    return np.where(above.any(axis=0), above.argmax(axis=0), above.shape[0] - 1)


def _first_above(
    scores: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exit counts [T, E] and correct counts [T] when each sample leaves at the first exit whose
    score is strictly above the threshold, else at the final exit; ``thresholds`` sorted ascending.

    A sample leaves at exit e for exactly the thresholds t with max(scores[:e]) <= t < max(scores[:e+1]),
    one interval per (sample, exit); the intervals are added up over the grid with difference arrays.
    """
    n_exits, n_thr = scores.shape[0], len(thresholds)
    running_max = np.maximum.accumulate(scores, axis=0)
    counts = np.empty((n_thr, n_exits), dtype=np.int64)
    hits = np.zeros(n_thr, dtype=np.int64)
    lo = np.zeros(scores.shape[1], dtype=np.int64)  # first threshold index of each sample's interval
    for e in range(n_exits):
        last = e == n_exits - 1
        hi = np.full_like(lo, n_thr) if last else np.searchsorted(thresholds, running_max[e], side="left")
        counts[:, e] = _interval_counts(lo, hi, n_thr)
        hits += _interval_counts(lo[correct[e]], hi[correct[e]], n_thr)
        lo = hi
    return counts, hits


def _interval_counts(lo: np.ndarray, hi: np.ndarray, n_thr: int) -> np.ndarray:
    """For each threshold index k in [0, n_thr), the number of intervals [lo, hi) holding k."""
    changes = np.bincount(lo, minlength=n_thr + 1) - np.bincount(hi, minlength=n_thr + 1)
    return np.cumsum(changes[:n_thr])


def points_frame(
    key: str,
    values: np.ndarray,
    counts: np.ndarray,
    hits: np.ndarray,
    costs: np.ndarray,
    backbone_cost: float,
) -> pd.DataFrame:
    """The sweep frame from exit counts [T, E] and correct counts [T] (see the module docstring)."""
    n = counts[0].sum()
    shares = counts / n
    cost = (shares * costs).sum(axis=1)
    frame = pd.DataFrame(
        {
            key: values,
            "cost_macs": cost,
            "cost_pct": 100.0 * cost / backbone_cost,
            "accuracy": 100.0 * hits / n,
        }
    )
    for e in range(counts.shape[1]):
        frame[f"exit_share_{e}"] = shares[:, e]
    return frame


def sweep(
    logits: Any,
    labels: Any,
    costs: Any,
    backbone_cost: float,
    *,
    thresholds: Sequence[float] | np.ndarray | None = None,
    grid: str = "paper",
    rule: str = "maxprob",
) -> pd.DataFrame:
    """Confidence-threshold early exiting, simulated offline; one row per threshold.

    A sample leaves at the first exit whose confidence (``rule``: ``"maxprob"``, the paper's max
    softmax, or ``"entropy"``, 1 - H(p)/log C) is strictly above the threshold, otherwise at the
    final exit. So threshold 1 sends every sample to the final exit and, with ``"maxprob"``,
    threshold 0 sends every sample to the first. ``logits``: [E, N, C] (or a list of E arrays
    [N, C]), last = final exit; ``costs``: [E] cumulative MACs of leaving at each exit (ICs
    included); ``backbone_cost``: MACs of the backbone-only model. ``thresholds`` replace the
    ``grid`` (``"paper"``: ``linspace(0, 1, 100)``; ``"dense"``: plus 1 - 10^-k, k = 2..6).
    Columns: see the module docstring.
    """
    logits, labels, costs, backbone_cost = check_exit_arrays(logits, labels, costs, backbone_cost)
    thresholds = check_thresholds(thresholds, grid)
    conf, preds = confidences(logits, rule)
    counts, hits = _first_above(conf, preds == labels, thresholds)
    return points_frame("threshold", thresholds, counts, hits, costs, backbone_cost)


def patience_sweep(
    logits: Any,
    labels: Any,
    costs: Any,
    backbone_cost: float,
    *,
    patiences: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Patience-based early exiting (PBEE, Zhou et al., NeurIPS 2020), simulated offline.

    Rule: with patience p, a sample leaves at the first exit i >= p whose prediction (argmax)
    equals the predictions of exits i-p, ..., i-1 (p + 1 consecutive equal predictions ending at
    i); if there is none, it leaves at the final exit. Patience 0 leaves at the first exit, and
    patience E-1 only at the final one. ``patiences`` default to 0..E-1. Same inputs and columns
    as :func:`sweep`, with ``patience`` in place of ``threshold``.
    """
    logits, labels, costs, backbone_cost = check_exit_arrays(logits, labels, costs, backbone_cost)
    n_exits = logits.shape[0]
    patiences = np.arange(n_exits) if patiences is None else np.unique(np.asarray(patiences))
    if patiences.ndim != 1 or patiences.size == 0 or not np.issubdtype(patiences.dtype, np.integer):
        raise ValueError(f"patiences must be a non-empty sequence of integers in [0, {n_exits - 1}]")
    if patiences.min() < 0 or patiences.max() > n_exits - 1:
        raise ValueError(f"patiences must lie in [0, {n_exits - 1}] for E = {n_exits} exits")
    preds = logits.argmax(axis=-1)
    agreeing = np.zeros(preds.shape)  # how many previous exits in a row agree with exit i
    for e in range(1, n_exits):
        agreeing[e] = np.where(preds[e] == preds[e - 1], agreeing[e - 1] + 1, 0)
    # "agreeing >= p" is "agreeing strictly above p - 1/2": the first-exit-above-threshold rule
    counts, hits = _first_above(agreeing, preds == labels, patiences - 0.5)
    return points_frame("patience", patiences, counts, hits, costs, backbone_cost)


def exit_accuracy(logits: Any, labels: Any) -> np.ndarray:
    """Accuracy (%) of every exit on its own, [E], from logits [E, N, C] and labels [N]."""
    logits = to_numpy(logits)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"logits must have shape [E exits, N samples, C classes], got {logits.shape}")
    labels = check_labels(labels, logits.shape[1], logits.shape[2])
    return 100.0 * (logits.argmax(axis=-1) == labels).mean(axis=1)


def single_exits(logits: Any, labels: Any, costs: Any, backbone_cost: float) -> pd.DataFrame:
    """Each exit on its own: columns ``exit``, ``cost_macs``, ``cost_pct``, ``accuracy`` (%)."""
    logits, labels, costs, backbone_cost = check_exit_arrays(logits, labels, costs, backbone_cost)
    return pd.DataFrame(
        {
            "exit": np.arange(len(costs)),
            "cost_macs": costs,
            "cost_pct": 100.0 * costs / backbone_cost,
            "accuracy": exit_accuracy(logits, labels),
        }
    )


def largest_cost_gap(points: pd.DataFrame) -> float:
    """The largest step in expected cost (% of backbone) between neighbouring operating points of one
    sweep: the part of the cost axis where a grid offers no operating point."""
    if "cost_pct" not in points.columns or len(points) < 2:
        raise ValueError("points must be one sweep's frame with a cost_pct column and at least two rows")
    return float(np.diff(points["cost_pct"].to_numpy()).max())
