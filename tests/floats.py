"""Test inputs that keep a comparison off the last bits of a float: the same rule computed twice
(offline in float64, online in float32 on sub-batches) may round a tie either way."""

from __future__ import annotations

import numpy as np


def separated_thresholds(scores: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    """Thresholds near the ``quantiles`` of ``scores``, each halfway across a gap wider than float32
    noise, so that the offline (float64) and online (float32) rules cannot disagree on a tie."""
    values = np.unique(scores)
    wide = np.flatnonzero(np.diff(values) > 1e-4)  # gap k lies between values[k] and values[k + 1]
    thresholds = set()
    for q in quantiles:
        k = wide[min(np.searchsorted(wide, int(q * (len(values) - 1))), len(wide) - 1)]
        thresholds.add(float(values[k] + values[k + 1]) / 2)
    return sorted(thresholds)
