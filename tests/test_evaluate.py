"""Early-exit sweeps, ZTW ensembling and budget tables, on hand-checked and random logits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax

from mexit.evaluate import (
    Scoring,
    ExitOutputs,
    budget_table,
    confidences,
    cost_ratio,
    exit_accuracy,
    largest_cost_gap,
    mean_ci,
    paired_differences,
    patience_sweep,
    regime_cost,
    training_macs_per_sample,
    run_points,
    shared_cost,
    single_exits,
    sweep,
    threshold_grid,
    ztw_ensemble,
)

# 2 exits x 4 samples x 2 classes. Exit 0 max-probs 0.9, 0.6, 0.7, 0.5 (predictions 0, 0, 1, 0);
# the final exit predicts 1, 1, 0, 1. Sample 3's logits are [0, 0], so its max-prob is exactly 0.5.
PROBS = np.array(
    [
        [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]],
        [[0.2, 0.8], [0.1, 0.9], [0.95, 0.05], [0.3, 0.7]],
    ]
)
LOGITS = np.log(PROBS / PROBS[..., :1])  # log-odds against class 0: sample 3 at exit 0 is [0, 0]
LABELS = np.array([0, 1, 1, 1])  # exit 0 right on samples 0, 2; final exit right on 1, 3
COSTS = np.array([10.0, 30.0])
BACKBONE = 25.0


def test_hand_checked_thresholds():
    df = sweep(LOGITS, LABELS, COSTS, BACKBONE, thresholds=[0.0, 0.5, 0.65, 0.8, 1.0])
    # t=0: all at exit 0; t=0.5: sample 3 (max-prob exactly 0.5) stays, strict >; t=0.65: samples 1, 3
    # go on; t=0.8: only sample 0 leaves early; t=1: all at the final exit.
    assert df["threshold"].tolist() == [0.0, 0.5, 0.65, 0.8, 1.0]
    assert df["exit_share_0"].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert df["exit_share_1"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert df["accuracy"].tolist() == [50.0, 75.0, 100.0, 75.0, 50.0]
    assert df["cost_macs"].tolist() == [10.0, 15.0, 20.0, 25.0, 30.0]
    np.testing.assert_allclose(df["cost_pct"], [40.0, 60.0, 80.0, 100.0, 120.0])


def test_threshold_extremes_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 30, size=(5, 200, 7))  # many samples with max-prob rounding to 1.0
    labels = rng.integers(0, 7, 200)
    costs = np.arange(1.0, 6.0)
    df = sweep(logits, labels, costs, 4.5)
    first, last = df.iloc[0], df.iloc[-1]
    assert first["threshold"] == 0.0 and first["exit_share_0"] == 1.0
    assert last["threshold"] == 1.0 and last["exit_share_4"] == 1.0 and last["cost_macs"] == 5.0
    singles = single_exits(logits, labels, costs, 4.5)
    assert first["accuracy"] == singles["accuracy"].iloc[0]
    assert last["accuracy"] == singles["accuracy"].iloc[-1]


def test_grids():
    assert len(sweep(LOGITS, LABELS, COSTS, BACKBONE)) == 100
    dense = threshold_grid("dense")
    assert len(dense) == 105 and np.all(np.diff(dense) > 0)
    np.testing.assert_allclose(dense[-6:-1], [0.99, 0.999, 0.9999, 0.99999, 0.999999])
    assert set(np.linspace(0, 1, 100)) <= set(dense)
    assert sweep(LOGITS, LABELS, COSTS, BACKBONE, grid="dense")["threshold"].tolist() == dense.tolist()


def test_entropy_rule():
    probs = np.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
    conf, preds = confidences(np.log(probs), rule="entropy")
    np.testing.assert_allclose(conf[0], [1 - 1.5 * np.log(2) / np.log(3), 0.0], atol=1e-12)
    assert preds[0].tolist() == [0, 0]
    logits = np.stack([np.log(probs[0]), np.log(probs[0])])
    df = sweep(logits, np.array([0, 1]), [1.0, 2.0], 2.0, rule="entropy", thresholds=[0.0, 0.05, 0.06])
    assert df["exit_share_0"].tolist() == [0.5, 0.5, 0.0]  # the uniform sample never leaves early
    with pytest.raises(ValueError, match="logits must have shape"):
        confidences(probs[0])


def test_margin_rule():
    probs = np.array([[[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [1.0 - 2e-9, 1e-9, 1e-9]]])
    conf, preds = confidences(np.log(probs), rule="margin")
    np.testing.assert_allclose(conf[0], [0.2, 0.0, 1.0], atol=1e-8)  # top-1 minus top-2 probability
    assert preds[0].tolist()[::2] == [0, 0]


def naive_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index [T, N]: the first exit whose score is strictly above t, else the last."""
    n_exits, n = scores.shape
    exits = np.full((len(thresholds), n), n_exits - 1)
    for t, threshold in enumerate(thresholds):
        for i in range(n):
            for e in range(n_exits - 1):
                if scores[e, i] > threshold:
                    exits[t, i] = e
                    break
    return exits


def check_against(df: pd.DataFrame, exits: np.ndarray, logits, labels, costs, backbone) -> None:
    n_exits, n = logits.shape[:2]
    correct = logits.argmax(-1) == labels
    np.testing.assert_allclose(df["cost_macs"], costs[exits].mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(df["cost_pct"], 100 * costs[exits].mean(axis=1) / backbone, rtol=1e-12)
    np.testing.assert_allclose(df["accuracy"], 100 * correct[exits, np.arange(n)].mean(axis=1), rtol=1e-12)
    for e in range(n_exits):
        np.testing.assert_allclose(df[f"exit_share_{e}"], (exits == e).mean(axis=1))


@pytest.mark.parametrize("rule", ["maxprob", "entropy"])
def test_vectorised_equals_naive(rule):
    rng = np.random.default_rng(1)
    logits = rng.integers(-2, 3, size=(4, 60, 5)).astype(np.float32)  # ties in confidence
    labels = rng.integers(0, 5, 60)
    costs = np.array([1.0, 2.5, 3.0, 7.0])
    conf, _ = confidences(logits, rule)
    # the grid, plus thresholds exactly at observed confidences (strict > must hold there too)
    thresholds = np.unique(np.concatenate([threshold_grid("dense"), conf[:, :10].ravel()]))
    df = sweep(logits, labels, costs, 6.0, thresholds=thresholds, rule=rule)
    assert df["threshold"].tolist() == thresholds.tolist()
    check_against(df, naive_exits(conf, thresholds), logits, labels, costs, 6.0)


def test_patience_hand_checked():
    preds = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [0, 1, 2, 2], [2, 2, 1, 1]]).T  # [E=4, N=4]
    logits = 5.0 * np.eye(3)[preds]
    labels = np.array([0, 1, 2, 1])
    df = patience_sweep(logits, labels, [1.0, 2.0, 3.0, 4.0], 4.0)
    # exits: p=0 [0,0,0,0]; p=1 [1,2,3,1]; p=2 [2,3,3,3]; p=3 all final
    assert df["patience"].tolist() == [0, 1, 2, 3]
    assert df["exit_share_0"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert df["exit_share_1"].tolist() == [0.0, 0.5, 0.0, 0.0]
    assert df["exit_share_2"].tolist() == [0.0, 0.25, 0.25, 0.0]
    assert df["exit_share_3"].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert df["accuracy"].tolist() == [25.0, 75.0, 100.0, 75.0]
    assert df["cost_macs"].tolist() == [1.0, 2.75, 3.75, 4.0]
    only = patience_sweep(logits, labels, [1.0, 2.0, 3.0, 4.0], 4.0, patiences=[2])
    assert only["patience"].tolist() == [2] and only["accuracy"].tolist() == [100.0]


def test_patience_equals_naive():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 80, 3))
    logits[1:] += 2 * logits[:-1]  # correlated predictions, so agreement runs occur
    labels = rng.integers(0, 3, 80)
    preds = logits.argmax(-1)
    runs = np.zeros(preds.shape)
    for e in range(1, 6):
        runs[e] = np.where(preds[e] == preds[e - 1], runs[e - 1] + 1, 0)
    exits = np.stack([naive_exits(runs >= p, np.array([0.5]))[0] for p in range(6)])
    costs = np.arange(1.0, 7.0)
    check_against(patience_sweep(logits, labels, costs, 5.5), exits, logits, labels, costs, 5.5)


def test_single_exits():
    df = single_exits(LOGITS, LABELS, COSTS, BACKBONE)
    assert df["exit"].tolist() == [0, 1]
    assert df["accuracy"].tolist() == [50.0, 50.0]
    assert df["cost_pct"].tolist() == [40.0, 120.0]


def test_exit_accuracy():
    labels = np.array([0, 1, 1, 0])  # exit 0 predicts 0, 0, 1, 0; the final exit 1, 1, 0, 1
    assert exit_accuracy(LOGITS, labels).tolist() == [75.0, 25.0]
    from_torch = exit_accuracy(torch.from_numpy(LOGITS).float(), torch.from_numpy(labels))
    assert isinstance(from_torch, np.ndarray) and from_torch.tolist() == [75.0, 25.0]
    with pytest.raises(ValueError, match="logits must have shape"):
        exit_accuracy(LOGITS[0], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        exit_accuracy(LOGITS, labels[:3])


def test_accepts_torch_and_lists():
    expected = sweep(LOGITS, LABELS, COSTS, BACKBONE)
    from_torch = sweep(torch.from_numpy(LOGITS), torch.from_numpy(LABELS), COSTS, BACKBONE)
    pd.testing.assert_frame_equal(from_torch, expected)
    pd.testing.assert_frame_equal(sweep(list(LOGITS), LABELS.tolist(), COSTS.tolist(), BACKBONE), expected)


def outputs(labels, seed, regime="mixed", **kwargs) -> ExitOutputs:
    tags = {"regime": regime, "method": "sdn", "seed": seed}
    return ExitOutputs(LOGITS, np.array(labels), COSTS, BACKBONE, tags=tags, **kwargs)


# Same logits, so the same thresholds fit; exit-0 accuracy 50, 75, 100 and final accuracy 50, 25, 0.
SEED_LABELS = ([0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0])


def test_budget_picking_and_seed_statistics():
    runs = [outputs(labels, seed) for seed, labels in enumerate(SEED_LABELS)]
    df = budget_table(runs)
    assert df["budget"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert (df["regime"] == "mixed").all() and (df["method"] == "sdn").all() and (df["n"] == 3).all()
    # 0.25 x 25 = 6.25 MACs: even exit 0 (10) does not fit
    assert np.isnan(df["accuracy_mean"].iloc[0]) and df["note"].iloc[0] == "no operating point fits in 3 of 3 runs"
    # 12.5 MACs: only thresholds below 0.5 (all at exit 0, cost 10)
    half = df.iloc[1]
    assert half["accuracy_mean"] == 75.0 and half["accuracy_std"] == 25.0 and half["cost_pct_mean"] == 40.0
    assert half["accuracy_ci95"] == pytest.approx(4.302653 * 25.0 / np.sqrt(3), rel=1e-6)
    assert half["note"] == ""
    # 18.75 MACs: the last fitting threshold is below 0.6 (cost 15);
    # 25 MACs: the last fitting one is below 0.9 (cost 25, fits exactly)
    assert df["cost_pct_mean"].tolist()[2:] == [60.0, 100.0]
    assert df["accuracy_mean"].iloc[3] == np.mean([75.0, 50.0, 25.0])  # exits [0, 1, 1, 1]
    assert (df["final_accuracy_mean"] == 25.0).all() and (df["final_accuracy_std"] == 25.0).all()
    assert (df["fit"] == "test").all() and (df["evaluation"] == "threshold").all()


def test_budget_table_groups_and_single_seed():
    runs = [
        outputs(SEED_LABELS[0], 0, "joint"),
        outputs(SEED_LABELS[1], 0, "mixed"),
        outputs(SEED_LABELS[2], 1, "mixed"),
    ]
    df = budget_table(runs, Scoring(budgets=[0.5]), by=["regime"])
    assert df["regime"].tolist() == ["joint", "mixed"] and df["n"].tolist() == [1, 2]
    assert df["accuracy_mean"].tolist() == [50.0, 87.5]
    assert np.isnan(df["accuracy_std"].iloc[0]) and np.isnan(df["accuracy_ci95"].iloc[0])
    everything = budget_table(runs, Scoring(budgets=[0.5]), by=())
    assert everything["n"].tolist() == [3] and "regime" not in everything.columns


def test_budget_fit_on_validation():
    # validation exit-0 max-probs are all 0.95, so at 50% every threshold below 0.95 fits on val;
    # on test those thresholds send every sample to the final exit
    val_logits = np.stack([np.log(np.array([[0.95, 0.05]] * 4)), LOGITS[1]])
    run = outputs(SEED_LABELS[1], 0, val_logits=val_logits, val_labels=np.zeros(4, dtype=int))
    test_fit = budget_table([run], Scoring(budgets=[0.5]))
    val_fit = budget_table([run], Scoring(budgets=[0.5], fit="val"))
    assert test_fit["accuracy_mean"].tolist() == [75.0] and test_fit["cost_pct_mean"].tolist() == [40.0]
    assert val_fit["accuracy_mean"].tolist() == [25.0] and val_fit["cost_pct_mean"].tolist() == [120.0]
    assert val_fit["fit"].tolist() == ["val"]


def pbee_case(method: str | None) -> ExitOutputs:
    """The hand-checked patience case of test_patience_hand_checked as a run tagged ``method``."""
    preds = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [0, 1, 2, 2], [2, 2, 1, 1]]).T
    tags = {} if method is None else {"method": method}
    return ExitOutputs(5.0 * np.eye(3)[preds], np.array([0, 1, 2, 1]), [1.0, 2.0, 3.0, 4.0], 4.0, tags=tags)


def test_budget_table_scores_pbee_runs_by_patience():
    budgets = (0.25, 0.75, 0.95, 1.0)
    pbee = budget_table([pbee_case("pbee")], Scoring(budgets=budgets), by=("method",))
    # patience 0..3 costs 1, 2.75, 3.75, 4 MACs (rising with patience), accuracies 25, 75, 100, 75
    assert pbee["accuracy_mean"].tolist() == [25.0, 75.0, 100.0, 75.0]
    assert pbee["cost_pct_mean"].tolist() == [25.0, 68.75, 93.75, 100.0]
    assert (pbee["evaluation"] == "patience").all() and (pbee["final_accuracy_mean"] == 75.0).all()
    # every exit has max-prob e^5 / (e^5 + 2): a threshold sends all samples to exit 0 or all to the final exit
    for method in ("sdn", "gpf", "unknown", None):
        plain = budget_table([pbee_case(method)], Scoring(budgets=budgets), by=())
        assert plain["accuracy_mean"].tolist() == [25.0, 25.0, 25.0, 75.0]
        assert (plain["evaluation"] == "threshold").all()
    mixed = budget_table([pbee_case("pbee"), pbee_case("sdn")], Scoring(budgets=(0.95,)), by=())
    assert mixed["evaluation"].tolist() == ["patience, threshold"] and mixed["accuracy_mean"].tolist() == [62.5]


def noisy_views(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits [3, n, 4] of three exits seeing the label through independent noise, and the labels."""
    labels = rng.integers(0, 4, n)
    signal = 1.5 * np.eye(4)[labels]
    return np.stack([signal + rng.normal(0, 1.5, (n, 4)) for _ in range(3)]), labels


def test_budget_table_scores_ztw_runs_through_the_validation_fitted_ensemble():
    rng = np.random.default_rng(5)
    (test, test_labels), (val, val_labels) = noisy_views(rng, 200), noisy_views(rng, 150)
    costs, budgets = np.array([2.0, 5.0, 11.0]), (0.3, 0.6, 1.0)

    def run(method: str) -> ExitOutputs:
        tags = {"method": method}
        return ExitOutputs(test, test_labels, costs, 10.0, val_logits=val, val_labels=val_labels, tags=tags)

    ensembled = ztw_ensemble(test, fit_logits=val, fit_labels=val_labels)
    curve = sweep(ensembled, test_labels, costs, 10.0)
    val_curve = sweep(ztw_ensemble(val, fit_logits=val, fit_labels=val_labels), val_labels, costs, 10.0)
    for fit, picking in (("test", curve), ("val", val_curve)):
        df = budget_table([run("ztw")], Scoring(budgets=budgets, fit=fit), by=())
        picked = [np.flatnonzero(picking["cost_macs"] <= b * 10.0)[-1] for b in budgets]
        np.testing.assert_allclose(df["accuracy_mean"], curve["accuracy"].iloc[picked])
        np.testing.assert_allclose(df["cost_pct_mean"], curve["cost_pct"].iloc[picked])
        assert (df["evaluation"] == "ztw-ensemble").all()
    ztw, sdn = budget_table([run("ztw")], Scoring(budgets=budgets), by=()), budget_table([run("sdn")], Scoring(budgets=budgets), by=())
    assert not np.allclose(ztw["accuracy_mean"], sdn["accuracy_mean"])
    # the final-exit column is the plain final exit's own accuracy, not the ensembled one's
    plain_final, ensembled_final = exit_accuracy(test, test_labels)[-1], exit_accuracy(ensembled, test_labels)[-1]
    assert plain_final != ensembled_final and (ztw["final_accuracy_mean"] == plain_final).all()


def test_ztw_never_worse_on_fitting_split_and_deterministic():
    rng = np.random.default_rng(3)
    n, c = 300, 4
    labels = rng.integers(0, c, n)
    signal = 1.5 * np.eye(c)[labels]
    logits = np.stack([signal + rng.normal(0, 1.5, (n, c)) for _ in range(3)]).astype(np.float32)
    ens = ztw_ensemble(logits, fit_logits=logits, fit_labels=labels)  # in-sample, on purpose
    assert ens.shape == logits.shape and ens.dtype == np.float32
    np.testing.assert_allclose(np.exp(ens).sum(-1), 1.0, rtol=1e-5)

    def nll(logp):
        return -logp[:, np.arange(n), labels].mean(axis=1)

    plain, fitted = nll(log_softmax(logits.astype(np.float64), axis=-1)), nll(ens.astype(np.float64))
    assert np.all(fitted <= plain + 1e-6)
    assert fitted[2] < plain[2] - 0.05  # three independent noisy views beat one
    np.testing.assert_array_equal(ztw_ensemble(logits, fit_logits=logits, fit_labels=labels), ens)


def test_ztw_fits_on_given_split():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 100)
    logits = rng.normal(size=(2, 100, 3))
    fit_logits = 3.0 * np.eye(3)[labels][None].repeat(2, axis=0) + rng.normal(size=(2, 100, 3))
    in_sample = ztw_ensemble(logits, fit_logits=logits, fit_labels=labels)
    on_val = ztw_ensemble(logits, fit_logits=fit_logits, fit_labels=labels)
    assert not np.allclose(in_sample, on_val)
    # the fitting split may differ in size from the reported one, whose labels are never needed
    assert ztw_ensemble(logits[:, :10], fit_logits=fit_logits, fit_labels=labels).shape == (2, 10, 3)
    with pytest.raises(TypeError, match="fit_labels"):
        ztw_ensemble(logits, fit_logits=fit_logits)
    with pytest.raises(ValueError, match="fit_logits must have"):
        ztw_ensemble(logits, fit_logits=fit_logits[:1], fit_labels=labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        ztw_ensemble(logits, fit_logits=fit_logits, fit_labels=labels[:50])


def test_exit_outputs_converts_and_checks():
    run = ExitOutputs(torch.from_numpy(LOGITS), torch.from_numpy(LABELS), [10, 30], 25)
    assert isinstance(run.test_logits, np.ndarray) and run.costs.dtype == np.float64 and run.tags == {}
    with pytest.raises(ValueError, match="val_logits and val_labels"):
        ExitOutputs(LOGITS, LABELS, COSTS, BACKBONE, val_logits=LOGITS)
    with pytest.raises(ValueError, match="val_logits must have shape"):
        ExitOutputs(LOGITS, LABELS, COSTS, BACKBONE, val_logits=LOGITS[:1], val_labels=LABELS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": LABELS[:3]}, "labels must have shape"),
        ({"labels": LABELS + 5}, "labels must lie in"),
        ({"costs": [30.0, 10.0]}, "costs must be positive and strictly increasing"),
        ({"costs": [10.0, 10.0]}, "costs must be positive and strictly increasing"),
        ({"costs": [10.0, 20.0, 30.0]}, "costs must have one value per exit"),
        ({"backbone_cost": 0.0}, "backbone_cost"),
        ({"logits": LOGITS[0]}, "logits must have shape"),
        ({"rule": "variance"}, "rule must be one of"),
        ({"grid": "fine"}, "grid must be one of"),
        ({"thresholds": [0.5, 1.5]}, "thresholds must be"),
    ],
)
def test_sweep_rejects_bad_input(kwargs, match):
    args = {"logits": LOGITS, "labels": LABELS, "costs": COSTS, "backbone_cost": BACKBONE} | kwargs
    with pytest.raises(ValueError, match=match):
        sweep(**args)


def test_patience_and_table_reject_bad_input():
    with pytest.raises(ValueError, match="patiences must lie in"):
        patience_sweep(LOGITS, LABELS, COSTS, BACKBONE, patiences=[2])
    run = outputs(SEED_LABELS[0], 0)
    for budgets in ([0.0], [1.5], [-0.25], [float("nan")], [0.5, float("inf")]):
        with pytest.raises(ValueError, match=r"budgets must be fractions of the backbone cost in \(0, 1\]"):
            budget_table([run], Scoring(budgets=budgets))
    with pytest.raises(ValueError, match="outputs must hold"):
        budget_table([])
    with pytest.raises(ValueError, match="fit='val' needs"):
        budget_table([run], Scoring(fit="val"))
    with pytest.raises(ValueError, match="by names tags"):
        budget_table([run], by=("dataset",))
    with pytest.raises(ValueError, match="method='ztw' runs need val_logits and val_labels"):
        budget_table([pbee_case("ztw")], by=("method",))


def test_run_points_are_each_runs_own_operating_points():
    runs = [outputs(labels, seed) for seed, labels in enumerate(SEED_LABELS)]
    points = run_points(runs)
    assert len(points) == 12 and {"regime", "method", "seed", "budget", "accuracy", "cost_pct", "final_accuracy"} <= set(points.columns)
    half = points[points["budget"] == 0.5]
    assert half["accuracy"].tolist() == [50.0, 75.0, 100.0] and (half["cost_pct"] == 40.0).all()
    assert points[points["budget"] == 0.25]["accuracy"].isna().all()
    assert points.groupby("seed")["final_accuracy"].first().tolist() == [50.0, 25.0, 0.0]
    table = budget_table(runs)  # the table summarises exactly these points
    assert table["accuracy_mean"].tolist()[1:] == points.groupby("budget")["accuracy"].mean().tolist()[1:]


def test_paired_differences_pair_by_seed():
    frame = pd.DataFrame(
        {
            "row": "R",
            "budget": 1.0,
            "regime": ["joint"] * 3 + ["mixed"] * 3 + ["disjoint"] * 2,
            "seed": [0, 1, 2, 0, 1, 2, 0, 1],
            "accuracy": [70.0, 80.0, 90.0, 71.0, 82.0, 93.0, 60.0, 60.0],
        }
    )
    diffs = paired_differences(frame, [("mixed", "joint"), ("mixed", "disjoint")]).set_index("pair")
    assert diffs.loc["mixed - joint", "mean"] == pytest.approx(2.0)  # 1, 2, 3: seed levels cancel
    assert diffs.loc["mixed - joint", "std"] == pytest.approx(1.0)
    half = 4.302652729749464 / np.sqrt(3)
    assert (diffs.loc["mixed - joint", "low"], diffs.loc["mixed - joint", "high"]) == pytest.approx((2 - half, 2 + half))
    assert diffs.loc["mixed - disjoint", "n"] == 2  # only seeds present for both
    assert diffs.loc["mixed - disjoint", "mean"] == pytest.approx(16.5)
    with pytest.raises(ValueError, match="hybrid"):
        paired_differences(frame, [("hybrid", "joint")])
    with pytest.raises(ValueError, match="lacks columns"):
        paired_differences(frame.drop(columns="seed"), [("mixed", "joint")])


def test_mean_ci():
    summary = mean_ci([1.0, 2.0, 3.0])
    assert summary["mean"] == 2.0 and summary["std"] == 1.0 and summary["n"] == 3
    assert summary["ci95"] == pytest.approx(4.302652729749464 / np.sqrt(3))
    single = mean_ci([4.0])
    assert single["mean"] == 4.0 and np.isnan(single["ci95"]) and np.isnan(single["low"])


def _phases() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for regime, phases in (("disjoint", ("P1", "P3")), ("joint", ("P2",)), ("mixed", ("P1", "P2"))):
            for phase in phases:
                key = f"{phase}-s{seed}" if phase == "P1" else f"{regime}-{phase}-s{seed}"
                wall = {"P1": 10.0, "P2": 20.0, "P3": 5.0}[phase]
                rows.append({"row": "R", "regime": regime, "seed": seed, "phase": phase, "phase_key": key,
                             "wall_time_s": wall, "epochs_run": 3, "steps": 30, "epoch_cap": 4, "train_macs": 30 * wall,
                             "stopped_early": phase == "P3"})
    return pd.DataFrame(rows)


def test_costs_per_regime_and_with_shared_phases_once():
    per_regime = regime_cost(_phases())
    mixed = per_regime[(per_regime["regime"] == "mixed") & (per_regime["seed"] == 0)].iloc[0]
    assert mixed["wall_time_s"] == 30.0 and mixed["steps"] == 60 and mixed["epochs_run"] == 6
    assert mixed["train_macs"] == 30 * (10 + 20)
    shared = shared_cost(_phases()).iloc[0]
    assert shared["wall_time_s_per_regime"] == 10 + 5 + 20 + 10 + 20
    assert shared["wall_time_s_once"] == 10 + 5 + 20 + 20  # P1 counted once
    with pytest.raises(ValueError, match="phase_key"):
        regime_cost(_phases().drop(columns="phase_key"))


def test_training_macs_count_the_forward_a_phase_computes_and_the_backward_where_gradients_flow():
    exits, backbone = (10, 30, 100), 90  # ICs of 10 MACs in all, backbone 90 (its final head included)
    assert training_macs_per_sample("P1", exits, backbone) == 3 * 90  # no IC computed, only the final head's loss
    assert training_macs_per_sample("P2", exits, backbone) == 3 * 100
    assert training_macs_per_sample("P3", exits, backbone) == 100 + 2 * 10  # the frozen backbone needs no gradient
    with pytest.raises(ValueError, match="phase must be one of"):
        training_macs_per_sample("P4", exits, backbone)
    with pytest.raises(ValueError, match="backbone_macs"):
        training_macs_per_sample("P2", exits, 200)


def test_largest_cost_gap_is_the_widest_step_between_operating_points():
    points = pd.DataFrame({"cost_pct": [10.0, 12.0, 40.0, 41.0]})
    assert largest_cost_gap(points) == 28.0
    paper = sweep(LOGITS, LABELS, COSTS, BACKBONE, grid="paper")
    dense = sweep(LOGITS, LABELS, COSTS, BACKBONE, grid="dense")
    assert largest_cost_gap(dense) <= largest_cost_gap(paper)
    with pytest.raises(ValueError, match="cost_pct"):
        largest_cost_gap(points.iloc[:1])


def test_cost_ratio_per_row_and_seed():
    per_regime = regime_cost(_phases())
    ratio = cost_ratio(per_regime, "mixed", "joint")
    assert ratio.tolist() == [1.5, 1.5]  # (P1 10 + P2 20) / P2 20, each seed
    assert cost_ratio(per_regime, "mixed", "joint", value="steps").tolist() == [2.0, 2.0]
    assert cost_ratio(per_regime[per_regime["regime"] != "joint"], "mixed", "joint").empty


def test_format_interval():
    from mexit.evaluate.stats import format_interval

    assert format_interval(1.234, 0.5, 2.0) == "1.2 [0.5, 2.0]"
    assert format_interval(1.234, -0.5, 2.0, signed=True) == "+1.2 [-0.5, +2.0]"
    assert format_interval(1.25, np.nan, np.nan, digits=2) == "1.25"
    assert format_interval(np.nan, np.nan, np.nan) == "–"
    assert format_interval(-0.04, -0.3, 0.02) == "0.0 [-0.3, 0.0]"  # never "-0.0"
    assert format_interval(-0.004, -0.04, 0.1, digits=1, signed=True) == "+0.0 [+0.0, +0.1]"


def test_ztw_weights_stay_non_negative_where_a_negative_one_would_fit_better():
    from mexit.evaluate.ztw import _fit_exit

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    wrong = np.eye(3)[(labels + 1) % 3] * 4.0  # exit 0 confidently predicts the wrong class
    right = np.eye(3)[labels] * 0.5 + rng.normal(0, 0.5, (300, 3))  # exit 1 weakly informative
    logp = log_softmax(np.stack([wrong, right]), axis=-1)
    weights, _ = _fit_exit(logp, labels)
    assert (weights >= 0).all()
    assert weights[0] == pytest.approx(0.0, abs=1e-6)  # unconstrained, it would turn negative
    assert weights[1] > 0


def test_run_curve_follows_the_runs_method_as_the_budget_table_does():
    from mexit.evaluate import run_curve

    curve = run_curve(pbee_case("pbee"))
    assert curve["cost_macs"].tolist() == [1.0, 2.75, 3.75, 4.0] and curve["accuracy"].tolist() == [25.0, 75.0, 100.0, 75.0]
    assert (curve["evaluation"] == "patience").all()
    plain = run_curve(pbee_case("sdn"), Scoring(grid="dense"))
    out = pbee_case("sdn")
    assert plain.drop(columns="evaluation").equals(sweep(out.test_logits, out.test_labels, out.costs, out.backbone_cost, grid="dense"))
    assert (plain["evaluation"] == "threshold").all()


def test_float16_logits_leave_the_budget_table_within_005_points() -> None:
    import torch

    from mexit.store import compact_logits

    rng = np.random.default_rng(0)
    exits, n, classes = 4, 10_000, 100
    labels = rng.integers(0, classes, n)
    signal = np.linspace(1.0, 4.0, exits)[:, None, None] * np.eye(classes)[labels][None]
    logits = (signal + rng.normal(0, 1.5, (exits, n, classes))).astype(np.float32) * 3
    half = compact_logits(torch.from_numpy(logits))
    assert half.dtype == torch.float16
    costs = [1.0, 2.0, 3.0, 4.5]
    tables = [
        budget_table([ExitOutputs(values, labels, costs, 4.0, tags={"regime": "mixed", "method": "sdn"})], Scoring(grid="dense"))
        for values in (logits, half.float().numpy())
    ]
    assert tables[0]["accuracy_mean"].between(1, 99).all()  # operating points inside the curve, not at its ends
    assert np.abs(tables[0]["accuracy_mean"] - tables[1]["accuracy_mean"]).max() <= 0.05
    assert compact_logits(torch.tensor([1e6])).dtype == torch.float32  # beyond float16: kept as float32
