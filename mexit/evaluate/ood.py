"""Telling in-distribution inputs from out-of-distribution ones by an exit's maximum softmax.

As the authors' code measures it (their ``eval.py``: ``evaluate_earlyexiting_ood_detection``): the
AUROC of the maximum softmax with in-distribution images as the positives, 50% for a confidence
that says nothing, 100% when every in-distribution image is more confident than every foreign one;

- per exit (:func:`exit_ood_auroc`): each exit's own maximum softmax;
- along the thresholds (:func:`threshold_ood_auroc`): each image, in-distribution or not, leaves at
  the first exit whose maximum softmax is above the threshold (else the final exit), and the
  confidence it leaves with is the score. Beside it, the expected cost of either kind of input:
  their code charges one cost to both; we report each, since foreign inputs that leave early are
  cheap mistakes and those that run to the end cost the full backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mexit.evaluate.calibration import auroc
from mexit.evaluate.sweeps import check_costs, confidences, leaving_exit, to_numpy


def _scores(id_logits: Any, ood_logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each exit's maximum softmax, [E, N] and [E, M], of the two sets of logits [E, *, C]."""
    id_logits, ood_logits = to_numpy(id_logits), to_numpy(ood_logits)
    if id_logits.ndim != 3 or ood_logits.ndim != 3 or id_logits.shape[::2] != ood_logits.shape[::2]:
        raise ValueError(f"id_logits and ood_logits must be [E, N, C] and [E, M, C] of one E and C, got {id_logits.shape} and {ood_logits.shape}")
    if 0 in id_logits.shape or 0 in ood_logits.shape:
        raise ValueError("id_logits and ood_logits must hold at least one exit, image and class")
    return confidences(id_logits)[0], confidences(ood_logits)[0]


def exit_ood_auroc(id_logits: Any, ood_logits: Any) -> np.ndarray:
    """AUROC (%) of every exit's maximum softmax at ranking ``id_logits``' images above
    ``ood_logits``' ones, [E]."""
    id_scores, ood_scores = _scores(id_logits, ood_logits)
    return np.array([100.0 * auroc(i, o) for i, o in zip(id_scores, ood_scores)])


def threshold_ood_auroc(
    id_logits: Any, ood_logits: Any, costs: Any, backbone_cost: float, thresholds: Sequence[float]
) -> pd.DataFrame:
    """Early exit at each of ``thresholds``, on both sets: one row per threshold with ``threshold``,
    ``ood_auroc`` (%, the confidence each image leaves with), ``id_cost_pct`` and ``ood_cost_pct``
    (expected MACs of each set, % of ``backbone_cost``; ``costs`` [E] cumulative, as a sweep's)."""
    id_scores, ood_scores = _scores(id_logits, ood_logits)
    costs = check_costs(costs, id_scores.shape[0])
    rows = []
    for threshold in thresholds:
        leaving = [leaving_exit(scores, float(threshold)) for scores in (id_scores, ood_scores)]
        left_with = [scores[exits, np.arange(scores.shape[1])] for scores, exits in zip((id_scores, ood_scores), leaving)]
        rows.append({
            "threshold": float(threshold),
            "ood_auroc": 100.0 * auroc(*left_with),
            "id_cost_pct": 100.0 * float(costs[leaving[0]].mean()) / backbone_cost,
            "ood_cost_pct": 100.0 * float(costs[leaving[1]].mean()) / backbone_cost,
        })
    return pd.DataFrame(rows)
