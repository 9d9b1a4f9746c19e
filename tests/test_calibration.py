"""Calibration, reliability and failure prediction: hand-computed cases, then over stored-run outputs."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy.special import softmax  # noqa: E402

from mexit import claims  # noqa: E402
from mexit.evaluate import (  # noqa: E402
    ExitOutputs,
    Scoring,
    budget_calibration,
    expected_calibration_error,
    exit_calibration,
    failure_auroc,
    ks_calibration_error,
    pooled_reliability,
    reliability,
    run_points,
    sweep,
)
from mexit.evaluate.calibration import auroc  # noqa: E402
from mexit.evaluate.sweeps import confidences, leaving_exit  # noqa: E402
from mexit.plots import format_intervals, reliability_diagram  # noqa: E402


def test_a_perfectly_calibrated_confidence_has_no_expected_calibration_error() -> None:
    # 10 samples at confidence 0.3 with 3 right, 10 at 0.8 with 8 right: every bin's accuracy is its confidence
    confidence = np.array([0.3] * 10 + [0.8] * 10)
    correct = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2, dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)
    table = reliability(confidence, correct)
    assert table["count"].tolist() == [10, 10] and table["accuracy"].tolist() == pytest.approx([0.3, 0.8])


def test_an_overconfident_exit_is_off_by_its_gap_weighted_by_its_share() -> None:
    # 4 samples at confidence 1.0 (the last bin holds 1.0) with 2 right: gap 0.5; 4 at 0.5 with 2 right: gap 0
    confidence = np.array([1.0] * 4 + [0.5] * 4)
    correct = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.5 * 0.5)
    assert reliability(confidence, correct, bins=15)["bin"].tolist() == [7, 14]
    with pytest.raises(ValueError, match="confidence must lie in"):
        expected_calibration_error([1.5], [True])


def test_the_authors_ks_calibration_error_by_hand() -> None:
    # two classes, three samples; class 0 sorted by p0: (0.2, y=1), (0.6, y=0), (0.9, y=1)
    # cumsum p0 / 3: 0.2/3, 0.8/3, 1.7/3; cumsum 1[y=0] / 3: 0, 1/3, 1/3 -> gaps 0.2/3, 0.2/3, 0.7/3
    # class 1 (p1 = 1 - p0) sorted: (0.1, y=1), (0.4, y=0), (0.8, y=1): cumsums 0.1, 0.5, 1.3 vs 1, 1, 2 (/3): gaps 0.9, 0.5, 0.7 (/3)
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    labels = np.array([1, 0, 1])
    assert ks_calibration_error(probs, labels) == pytest.approx((0.7 / 3 + 0.9 / 3) / 2)
    one_hot = np.eye(2)[labels]
    assert ks_calibration_error(one_hot, labels) == 0.0  # certain and right: calibrated


def test_auroc_counts_pairs_and_halves_ties() -> None:
    assert auroc([0.9, 0.8], [0.7, 0.85]) == pytest.approx(3 / 4)
    assert auroc([0.5], [0.5]) == pytest.approx(0.5)
    assert auroc([1.0, 0.9], [0.1, 0.2]) == 1.0
    assert math.isnan(auroc([], [0.3]))
    assert failure_auroc([0.9, 0.6, 0.7], [True, False, True]) == 1.0
    assert math.isnan(failure_auroc([0.9, 0.6], [True, True]))  # no wrong prediction to tell apart


def _run(regime: str, seed: int, sharpness: float) -> ExitOutputs:
    """Three exits over 4 classes, 200 test and 100 validation samples; later exits are more often
    right; ``sharpness`` scales the logits (the larger, the more overconfident)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, n)
        logits = rng.normal(size=(3, n, 4))
        for e, skill in enumerate((0.6, 1.2, 2.0)):
            logits[e, np.arange(n), labels] += skill
        return sharpness * logits, labels

    test, val = split(200), split(100)
    return ExitOutputs(test[0], test[1], np.array([4.0, 7.0, 10.0]), 10.0, val[0], val[1],
                       tags={"row": "R", "regime": regime, "method": "sdn", "seed": seed})


RUNS = [_run(regime, seed, sharpness) for regime, sharpness in (("joint", 3.0), ("mixed", 1.0)) for seed in range(3)]


def test_exit_calibration_measures_every_exit_of_every_run() -> None:
    table = exit_calibration(RUNS)
    assert len(table) == 6 * 3 and table["exit"].tolist()[:3] == [0, 1, 2]
    first = table.iloc[2]
    probs = softmax(RUNS[0].test_logits[2], axis=-1)
    correct = probs.argmax(-1) == RUNS[0].test_labels
    assert first["accuracy"] == pytest.approx(100 * correct.mean())
    assert first["ece_pct"] == pytest.approx(100 * expected_calibration_error(probs.max(-1), correct))
    assert first["cost_pct"] == 100.0
    # the sharper logits are the worse calibrated: joint's ECE, averaged over the exits, above mixed's
    ece = table.groupby("regime")["ece_pct"].mean()
    assert ece["joint"] > ece["mixed"] + 5


def test_budget_calibration_reads_the_prediction_each_budget_picks() -> None:
    scoring = Scoring(budgets=(0.5, 0.8, 1.0), grid="dense")
    table = budget_calibration(RUNS, scoring)
    points = run_points(RUNS, scoring)
    assert np.allclose(table["accuracy"], points["accuracy"], equal_nan=True)  # the same prediction, scored again
    assert table["operating_point"].equals(points["operating_point"])
    first = RUNS[0]
    scores, _ = confidences(first.test_logits)
    leaving = leaving_exit(scores, points["operating_point"].iloc[1])
    curve = sweep(first.test_logits, first.test_labels, first.costs, first.backbone_cost, thresholds=[points["operating_point"].iloc[1]])
    assert np.bincount(leaving, minlength=3) / len(leaving) == pytest.approx(curve[["exit_share_0", "exit_share_1", "exit_share_2"]].iloc[0].to_numpy())
    with pytest.raises(ValueError, match="threshold-scored runs only"):
        budget_calibration([ExitOutputs(first.test_logits, first.test_labels, first.costs, 10.0, tags={"method": "pbee"})])


def test_pooled_reliability_pools_the_seeds_of_each_group() -> None:
    table = pooled_reliability(RUNS, -1)
    assert list(table.columns[:2]) == ["row", "regime"]
    assert table.groupby("regime")["count"].sum().tolist() == [600, 600]  # 3 seeds x 200 test samples
    figure_ax = reliability_diagram(table[table["row"] == "R"])
    assert [line.get_label() for line in figure_ax.get_lines()] == ["calibrated", "joint", "mixed"]
    [counts_ax] = [ax for ax in figure_ax.figure.axes if ax is not figure_ax]  # the bin counts, under the diagram
    heights = [bar.get_height() for bar in counts_ax.patches]
    part = table[table["row"] == "R"]
    expected = [100 * c / part.loc[part["regime"] == r, "count"].sum() for r in ("joint", "mixed") for c in part.loc[part["regime"] == r, "count"]]
    assert heights == pytest.approx(expected) and counts_ax.get_ylabel() == "Images (%)"


def _evidence(regimes: tuple[str, ...] = ("joint", "mixed")) -> pd.DataFrame:
    return pd.DataFrame([{"row": "R", "regime": r, "seed": s, "evidence": True, "early_stopped": True, "why": ""}
                         for r in regimes for s in range(3)])


def _per_exit(joint: float, mixed: float) -> pd.DataFrame:
    """ECE (%) per exit: ``joint`` and ``mixed`` at every exit, seed s adding 0.1 x s to joint's."""
    return pd.DataFrame([{"row": "R", "regime": regime, "seed": s, "exit": e, "ece_pct": value + (0.1 * s if regime == "joint" else 0)}
                         for regime, value in (("joint", joint), ("mixed", mixed)) for s in range(3) for e in range(3)])


def test_the_calibration_claim_holds_where_mixed_is_no_worse_calibrated_by_more_than_a_point() -> None:
    held = claims.calibration_claims(_per_exit(joint=10.0, mixed=5.0), _evidence())
    assert held["verdict"].tolist() == ["held"] and held["effect"].iloc[0] == pytest.approx(5.1)
    assert claims.calibration_claims(_per_exit(joint=10.0, mixed=10.5), _evidence())["verdict"].tolist() == ["held"]  # within a point
    assert claims.calibration_claims(_per_exit(joint=5.0, mixed=10.0), _evidence())["verdict"].tolist() == ["not held"]
    assert claims.calibration_claims(exit_calibration(RUNS), _evidence())["effect"].iloc[0] > 5  # the sharper joint runs
    assert claims.calibration_claims(_per_exit(1.0, 1.0).query("regime == 'mixed'"), _evidence()).empty
    not_evidence = _evidence().assign(evidence=False, why="P2: still rising")
    assert claims.calibration_claims(_per_exit(10.0, 5.0), not_evidence)["verdict"].tolist() == [claims.NOT_CONVERGED]


def test_intervals_are_formatted_per_group() -> None:
    frame = pd.DataFrame({"regime": ["joint"] * 3 + ["mixed"], "ece_pct": [1.0, 2.0, 3.0, 4.0]})
    view = format_intervals(frame, ["regime"], {"ece_pct": "ECE (%)"})
    assert view.loc["joint", "ECE (%)"].startswith("2.0 [") and view.loc["mixed", "ECE (%)"] == "4.0"
    with pytest.raises(ValueError, match="lacks columns"):
        format_intervals(frame, ["row"], {"ece_pct": "ECE"})
