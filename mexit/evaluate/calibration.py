"""Whether an exit's confidence can be trusted: calibration errors, reliability and failure prediction.

All take softmax probabilities (or a confidence per sample) and labels, never a model:

- :func:`expected_calibration_error`: the usual ECE (Guo et al., ICML 2017): the maximum softmax
  binned into ``bins`` equal-width bins of [0, 1], the gap between each bin's accuracy and mean
  confidence, weighted by the bin's share of samples;
- :func:`ks_calibration_error`: the authors' calibration measure (their ``eval.py``, after Gupta
  et al., "Calibration of neural networks using splines", arXiv 2006.12800): per class, the largest
  gap between the cumulative sums of its predicted probability and of its indicator, samples sorted
  by that probability; averaged over the classes;
- :func:`failure_auroc`: failure prediction (Jaeger et al., ICLR 2023; for early exits Kubaty et
  al., "Failure Prediction Is a Better Performance Proxy for Early-Exit Networks Than
  Calibration", arXiv 2508.21495): the AUROC of the confidence at telling right predictions from
  wrong ones, 0.5 for a confidence that says nothing, 1 for one that ranks every right prediction
  above every wrong one;
- :func:`reliability`: the bins of the ECE, for a reliability diagram.

Errors are fractions (0..1) here. Over stored runs (:class:`~mexit.evaluate.ExitOutputs`),
:func:`exit_calibration` measures every exit on its own and :func:`budget_calibration` the
early-exit prediction at each budget's operating point, both in % (AUROC in %); the confidence
whose calibration is measured is always the maximum softmax of the exit that answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from mexit.evaluate.scoring import Scoring
from mexit.evaluate.sweeps import confidences, leaving_exit, to_numpy
from mexit.evaluate.tables import ExitOutputs, group_runs, run_points

ECE_BINS = 15


def _check(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    confidence, correct = to_numpy(confidence).astype(np.float64), to_numpy(correct).astype(bool)
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(f"confidence and correct must be 1-D of one length > 0, got {confidence.shape} and {correct.shape}")
    if np.any((confidence < 0) | (confidence > 1)):
        raise ValueError("confidence must lie in [0, 1]")
    return confidence, correct


def reliability(confidence: Any, correct: Any, bins: int = ECE_BINS) -> pd.DataFrame:
    """One row per non-empty bin of [0, 1] (``bins`` equal widths; 1.0 falls in the last):
    ``bin``, ``low``, ``high``, ``count``, ``confidence`` (mean) and ``accuracy`` (fraction right)."""
    confidence, correct = _check(confidence, correct)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    rows = []
    for b in np.unique(index):
        members = index == b
        rows.append({"bin": int(b), "low": b / bins, "high": (b + 1) / bins, "count": int(members.sum()),
                     "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())})
    return pd.DataFrame(rows)


def expected_calibration_error(confidence: Any, correct: Any, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins: sum over bins of (share of samples) x |accuracy - mean confidence|."""
    table = reliability(confidence, correct, bins)
    share = table["count"] / table["count"].sum()
    return float((share * (table["accuracy"] - table["confidence"]).abs()).sum())


def ks_calibration_error(probs: Any, labels: Any) -> float:
    """The authors' KS calibration error of probabilities [N, C] against labels [N]: per class k,
    max over the samples sorted by p_k of |cumsum(p_k) - cumsum(1[y = k])| / N; the mean over classes."""
    probs, labels = to_numpy(probs).astype(np.float64), to_numpy(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be [N, C] and labels [N], got {probs.shape} and {labels.shape}")
    n, n_classes = probs.shape
    errors = []
    for k in range(n_classes):
        order = np.argsort(probs[:, k], kind="stable")
        gap = np.cumsum(probs[order, k]) - np.cumsum(labels[order] == k)
        errors.append(np.abs(gap).max() / n)
    return float(np.mean(errors))


def auroc(positive: Any, negative: Any) -> float:
    """The probability that a score of ``positive`` exceeds one of ``negative`` (ties count one
    half): the area under the ROC curve; NaN when either side is empty."""
    positive, negative = np.asarray(positive, dtype=np.float64).ravel(), np.asarray(negative, dtype=np.float64).ravel()
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    ranks = pd.Series(np.concatenate([positive, negative])).rank(method="average").to_numpy()  # ties get their mean rank
    above = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(above / (positive.size * negative.size))


def failure_auroc(confidence: Any, correct: Any) -> float:
    """AUROC of ``confidence`` at ranking right predictions above wrong ones; NaN when all are
    right or all wrong."""
    confidence, correct = _check(confidence, correct)
    return auroc(confidence[correct], confidence[~correct])


def calibration_of(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """One prediction's calibration, from its probabilities [N, C]: ``accuracy``, ``ece_pct``,
    ``ks_pct`` and ``failure_auroc_pct``."""
    confidence, correct = probs.max(axis=-1), probs.argmax(axis=-1) == labels
    return {
        "accuracy": 100.0 * float(correct.mean()),
        "ece_pct": 100.0 * expected_calibration_error(confidence, correct, bins),
        "ks_pct": 100.0 * ks_calibration_error(probs, labels),
        "failure_auroc_pct": 100.0 * failure_auroc(confidence, correct),
    }


def exit_calibration(outputs: Sequence[ExitOutputs], bins: int = ECE_BINS) -> pd.DataFrame:
    """Every exit of every run on its own, on the test split: one row per (run, exit) with the
    run's tags, ``exit`` (0-based; the last is the final exit), ``cost_pct`` (% of the backbone)
    and :func:`calibration_of`'s columns."""
    rows = []
    for out in outputs:
        for e in range(out.test_logits.shape[0]):
            measured = calibration_of(softmax(out.test_logits[e].astype(np.float64), axis=-1), out.test_labels, bins)
            rows.append({**out.tags, "exit": e, "cost_pct": 100.0 * out.costs[e] / out.backbone_cost, **measured})
    return pd.DataFrame(rows)


def budget_calibration(outputs: Sequence[ExitOutputs], scoring: Scoring = Scoring(), bins: int = ECE_BINS) -> pd.DataFrame:
    """The early-exit prediction at each budget's operating point (:func:`mexit.evaluate.run_points`
    under ``scoring``): each sample answered by the exit it leaves at. One row per (run, budget):
    the run's tags, ``budget``, ``operating_point`` (the threshold), ``cost_pct`` and
    :func:`calibration_of`'s columns; NaN where no operating point fits. Runs must be scored by
    threshold (not PBEE's patience or ZTW's ensemble)."""
    points = run_points(outputs, scoring)
    if set(points["evaluation"]) - {"threshold"}:
        raise ValueError(f"budget_calibration reads threshold-scored runs only, got {sorted(set(points['evaluation']))}")
    rows = []
    for r, out in enumerate(outputs):
        scores, _ = confidences(out.test_logits, scoring.rule)
        for b, budget in enumerate(scoring.budgets):
            point = points.iloc[r * len(scoring.budgets) + b]
            measured = dict.fromkeys(("accuracy", "ece_pct", "ks_pct", "failure_auroc_pct"), float("nan"))
            if not np.isnan(point["operating_point"]):
                leaving = leaving_exit(scores, point["operating_point"])
                probs = softmax(out.test_logits[leaving, np.arange(len(leaving))].astype(np.float64), axis=-1)
                measured = calibration_of(probs, out.test_labels, bins)
            rows.append({**out.tags, "budget": budget, "operating_point": point["operating_point"],
                         "cost_pct": point["cost_pct"], **measured})
    return pd.DataFrame(rows)


def pooled_reliability(
    outputs: Sequence[ExitOutputs], exit_index: int, by: Sequence[str] = ("row", "regime"), bins: int = ECE_BINS
) -> pd.DataFrame:
    """:func:`reliability` of exit ``exit_index`` (negative counts from the final exit, -1) with the
    test samples of every run of a group (its seeds) pooled: one row per (group, bin), the ``by``
    columns first."""
    frames = []
    for key, runs in group_runs(outputs, by).items():
        probs = [softmax(out.test_logits[exit_index].astype(np.float64), axis=-1) for out in runs]
        confidence = np.concatenate([p.max(axis=-1) for p in probs])
        correct = np.concatenate([p.argmax(axis=-1) == out.test_labels for p, out in zip(probs, runs)])
        frames.append(reliability(confidence, correct, bins).assign(**dict(zip(by, key))))
    frame = pd.concat(frames, ignore_index=True)
    return frame[[*by, *[c for c in frame.columns if c not in by]]]
