"""Time :func:`mexit.evaluate.sweep` against a straightforward per-threshold loop, same data, same run.

100 thresholds over 50,000 samples x 16 exits x 100 classes (random float32 logits). The loop
walks the exits for every threshold, as the authors' evaluation does; both share the confidence
computation and the frame arithmetic, and must give identical frames. The softmax over all logits
dominates both, so the threshold step is also timed alone.

    python benchmarks/sweep_speed.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from mexit.evaluate import confidences, sweep, threshold_grid
from mexit.evaluate.sweeps import _first_above, points_frame

EXITS, SAMPLES, CLASSES = 16, 50_000, 100


def naive_counts(
    conf: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exit counts [T, E] and correct counts [T]: one pass over the exits per threshold."""
    counts = np.zeros((len(thresholds), EXITS), dtype=np.int64)
    hits = np.zeros(len(thresholds), dtype=np.int64)
    for t, threshold in enumerate(thresholds):
        exit_at = np.full(SAMPLES, EXITS - 1)
        unresolved = np.ones(SAMPLES, dtype=bool)
        for e in range(EXITS - 1):
            leaving = unresolved & (conf[e] > threshold)
            exit_at[leaving] = e
            unresolved &= ~leaving
        counts[t] = np.bincount(exit_at, minlength=EXITS)
        hits[t] = correct[exit_at, np.arange(SAMPLES)].sum()
    return counts, hits


def naive_sweep(
    logits: np.ndarray, labels: np.ndarray, costs: np.ndarray, backbone_cost: float
) -> pd.DataFrame:
    """The sweep frame computed with :func:`naive_counts`."""
    thresholds = threshold_grid("paper")
    conf, preds = confidences(logits)
    counts, hits = naive_counts(conf, preds == labels, thresholds)
    return points_frame("threshold", thresholds, counts, hits, costs, backbone_cost)


def best_time(fn, repeats: int = 3) -> tuple[float, pd.DataFrame]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    rng = np.random.default_rng(0)
    # sharper exits deeper, so samples leave at many different exits
    scale = np.linspace(1.0, 6.0, EXITS, dtype=np.float32)[:, None, None]
    logits = rng.standard_normal((EXITS, SAMPLES, CLASSES), dtype=np.float32) * scale
    labels = rng.integers(0, CLASSES, SAMPLES)
    costs = np.linspace(1.0, 16.0, EXITS) * 1e6
    backbone_cost = 15.9e6

    fast_s, fast = best_time(lambda: sweep(logits, labels, costs, backbone_cost))
    naive_s, naive = best_time(lambda: naive_sweep(logits, labels, costs, backbone_cost))
    pd.testing.assert_frame_equal(fast, naive, check_exact=True)
    conf, preds = confidences(logits)
    thresholds, correct = threshold_grid("paper"), preds == labels
    fast_part_s, _ = best_time(lambda: _first_above(conf, correct, thresholds))
    naive_part_s, _ = best_time(lambda: naive_counts(conf, correct, thresholds))
    print(f"{len(fast)} thresholds x {SAMPLES:,} samples x {EXITS} exits x {CLASSES} classes, best of 3")
    for what, fast_t, naive_t in [
        ("whole sweep (softmax included)", fast_s, naive_s),
        ("threshold step alone", fast_part_s, naive_part_s),
    ]:
        ratio = naive_t / fast_t
        print(f"{what:31s} vectorised {fast_t:.3f} s, per-threshold loop {naive_t:.3f} s, ratio {ratio:.1f}x")
    print("both give identical frames")


if __name__ == "__main__":
    main()
