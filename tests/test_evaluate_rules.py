"""The evaluation options, each the paper's or ours: the operating point rule (``pick``), the
aggregation over seeds (``aggregate``) and the ZTW ensembling scope (``final``/``ztw_final``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import log_softmax

from mexit.config import ParameterError
from mexit.evaluate import ExitOutputs, Scoring, budget_table, exit_accuracy, run_curve, run_points, sweep, ztw_ensemble

# 2 exits x 4 samples x 2 classes; exit 0 predicts 0, 0, 1, 0 with max-probs 0.9, 0.6, 0.7, 0.5 and
# the final exit predicts 1, 1, 0, 1, so every sample is right at exactly one of the two exits.
# On the paper grid (k/99), samples move to the final exit in the order 3, 1, 2, 0 and the expected
# cost is 10 MACs (k <= 49), 15 (k 50-59), 20 (k 60-69), 25 (k 70-89), 30 (k 90-99).
PROBS = np.array(
    [
        [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]],
        [[0.2, 0.8], [0.1, 0.9], [0.95, 0.05], [0.3, 0.7]],
    ]
)
LOGITS = np.log(PROBS)
COSTS = np.array([10.0, 30.0])
BACKBONE = 25.0
# Test labels [0, 0, 1, 1]: accuracy 75, 100, 75, 50, 25 at cost 10, 15, 20, 25, 30.
TEST_LABELS = np.array([0, 0, 1, 1])


def run(
    val_labels: list[int], seed: int = 0, logits: np.ndarray = LOGITS, labels: np.ndarray = TEST_LABELS
) -> ExitOutputs:
    """A run whose validation split has the same logits as its test split but ``val_labels``."""
    tags = {"regime": "mixed", "method": "sdn", "seed": seed}
    val_labels = np.array(val_labels)
    return ExitOutputs(logits, labels, COSTS, BACKBONE, val_logits=logits, val_labels=val_labels, tags=tags)


def test_pick_best_takes_the_most_accurate_affordable_point_on_validation():
    # validation accuracy 50, 75, 100, 75, 50 at cost 10, 15, 20, 25, 30
    runs = [run([0, 1, 1, 1])]
    budgets = (0.6, 0.8, 1.0)  # 15, 20 and 25 MACs
    last = budget_table(runs, Scoring(budgets=budgets, fit="val", pick="last"))
    best = budget_table(runs, Scoring(budgets=budgets, fit="val", pick="best"))
    # last: the most expensive affordable point; best: the most accurate one on validation (cost 20),
    # not the most accurate one on test (cost 15, 100%)
    assert last["cost_pct_mean"].tolist() == [60.0, 80.0, 100.0]
    assert last["accuracy_mean"].tolist() == [100.0, 75.0, 50.0]
    assert best["cost_pct_mean"].tolist() == [60.0, 80.0, 80.0]
    assert best["accuracy_mean"].tolist() == [100.0, 75.0, 75.0]
    assert (last["pick"] == "last").all() and (best["pick"] == "best").all()
    points = run_points(runs, Scoring(budgets=budgets, fit="val", pick="best"))
    assert points["accuracy"].tolist() == [100.0, 75.0, 75.0] and (points["pick"] == "best").all()


def test_pick_best_takes_the_cheaper_point_on_a_tie():
    # validation accuracy 50, 75, 50, 75, 50 at cost 10, 15, 20, 25, 30: a tie at 15 and 25 MACs
    best = budget_table([run([0, 0, 0, 1])], Scoring(budgets=(1.0,), fit="val", pick="best"))
    assert best["cost_pct_mean"].tolist() == [60.0] and best["accuracy_mean"].tolist() == [100.0]
    last = budget_table([run([0, 0, 0, 1])], Scoring(budgets=(1.0,), fit="val", pick="last"))
    assert last["cost_pct_mean"].tolist() == [100.0] and last["accuracy_mean"].tolist() == [50.0]


def test_a_scoring_picks_best_on_validation_and_refuses_to_select_on_test():
    assert Scoring(pick="best").fit == "val" and Scoring().fit == "test"
    assert budget_table([run([0, 0, 0, 1])], Scoring(budgets=(1.0,), pick="best")).equals(
        budget_table([run([0, 0, 0, 1])], Scoring(budgets=(1.0,), fit="val", pick="best"))
    )
    with pytest.raises(ParameterError, match=r"pick='best' with fit='test'.*selection on test; use fit='val'"):
        Scoring(pick="best", fit="test")
    with pytest.raises(ParameterError, match=r"^pick: unknown value 'max'; allowed: last, best$"):
        Scoring(pick="max")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"budgets": [0.5, 1.5]}, r"budgets must be fractions of the backbone cost in \(0, 1\], got 1.5"),
        ({"budgets": "0.5"}, r"budgets must be a non-empty list"),
        ({"grid": "fine"}, r"grid: unknown value 'fine'; allowed: paper, dense"),
        ({"rule": "variance"}, r"rule: unknown value 'variance'; allowed: maxprob, entropy, margin"),
        ({"fit": "train"}, r"fit: unknown value 'train'; allowed: test, val"),
        ({"aggregate": "seeds"}, r"aggregate: unknown value 'seeds'; allowed: runs, curves"),
        ({"ztw_final": "ics"}, r"ztw_final: unknown value 'ics'; allowed: ensembled, plain"),
    ],
)
def test_a_scoring_names_a_bad_option_when_it_is_made(changes, message):
    with pytest.raises(ParameterError, match=message):
        Scoring(**changes)
    with pytest.raises(ParameterError, match=message):  # and so does a change of a good one
        dataclasses.replace(Scoring(), **changes)


def test_a_scoring_is_frozen_and_holds_its_budgets_as_a_tuple():
    scoring = Scoring(budgets=np.array([0.5, 1.0]))
    assert scoring.budgets == (0.5, 1.0) and hash(scoring) == hash(Scoring(budgets=[0.5, 1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        scoring.pick = "best"  # type: ignore[misc]


def two_runs() -> list[ExitOutputs]:
    """Run A: LOGITS, validation and test labels [0, 1, 1, 1] (accuracy 50, 75, 100, 75, 50 at cost
    10, 15, 20, 25, 30). Run B: exit 0 predicts 0 with max-prob 0.95 for every sample, labels all 0,
    so it costs 10 MACs with accuracy 100 for k <= 94 and 30 MACs with accuracy 25 for k >= 95."""
    confident = np.stack([np.log(np.array([[0.95, 0.05]] * 4)), LOGITS[1]])
    labels_a, labels_b = [0, 1, 1, 1], [0, 0, 0, 0]
    return [
        run(labels_a, seed=0, labels=np.array(labels_a)),
        run(labels_b, seed=1, logits=confident, labels=np.array(labels_b)),
    ]


def test_aggregate_curves_picks_one_index_on_the_mean_curve():
    # mean cost 10 (k <= 49), 12.5 (50-59), 15 (60-69), 17.5 (70-89), 20 (90-94), 30 (95-99)
    budgets = (0.6, 0.8)  # 15 and 20 MACs
    runs_table = budget_table(two_runs(), Scoring(budgets=budgets, aggregate="runs"), by=("regime",))
    curves = budget_table(two_runs(), Scoring(budgets=budgets, aggregate="curves"), by=("regime",))
    # runs: at 15 MACs A at 15 (75) and B at 10 (100); at 20 MACs A at 20 (100) and B at 10 (100)
    assert runs_table["accuracy_mean"].tolist() == [87.5, 100.0]
    assert runs_table["cost_pct_mean"].tolist() == [50.0, 60.0]
    # curves: at 15 MACs k = 69, A at 20 (100) and B at 10 (100); at 20 MACs k = 94, A at 30 (50), B at 10 (100)
    assert curves["accuracy_mean"].tolist() == [100.0, 75.0] and curves["cost_pct_mean"].tolist() == [60.0, 80.0]
    assert curves["accuracy_std"].tolist() == pytest.approx([0.0, np.std([50.0, 100.0], ddof=1)])
    assert curves["accuracy_ci95"].iloc[1] == pytest.approx(12.706205 * 50.0 / np.sqrt(2) / np.sqrt(2), rel=1e-6)
    assert (curves["n"] == 2).all() and (curves["aggregate"] == "curves").all()
    assert (runs_table["aggregate"] == "runs").all() and list(curves.columns) == list(runs_table.columns)


def test_aggregate_curves_with_pick_best_uses_the_mean_validation_accuracy():
    # at 20 MACs (k <= 94) the mean accuracy is highest, 100, at k = 60-69: A at 20 (100), B at 10 (100)
    best = budget_table(two_runs(), Scoring(budgets=(0.8,), fit="val", pick="best", aggregate="curves"), by=())
    assert best["accuracy_mean"].tolist() == [100.0] and best["cost_pct_mean"].tolist() == [60.0]


def test_aggregate_curves_notes_a_budget_the_mean_curve_misses_and_equals_runs_for_one_run():
    curves = budget_table(two_runs(), Scoring(budgets=(0.25,), aggregate="curves"), by=())
    assert np.isnan(curves["accuracy_mean"].iloc[0])
    assert curves["note"].iloc[0] == "no operating point of the mean curve fits"
    one = [run([0, 1, 1, 1])]
    on_curve, on_runs = (budget_table(one, Scoring(aggregate=a)).drop(columns=["aggregate", "note"]) for a in ("curves", "runs"))
    assert on_curve.equals(on_runs)


def test_aggregate_curves_refuses_groups_whose_curves_differ():
    preds = np.array([[0, 0, 0, 1], [0, 1, 1, 1], [0, 1, 2, 2], [2, 2, 1, 1]]).T
    logits, labels = 5.0 * np.eye(3)[preds], np.array([0, 1, 2, 1])
    four = ExitOutputs(logits, labels, [1.0, 2.0, 3.0, 4.0], 4.0, tags={"method": "pbee"})
    three = ExitOutputs(logits[1:], labels, [2.0, 3.0, 4.0], 4.0, tags={"method": "pbee"})
    assert len(budget_table([four, three], Scoring(aggregate="runs"), by=("method",))) == 4
    with pytest.raises(ValueError, match=r"aggregate='curves' averages.*\['4 patiences', '3 patiences'\]"):
        budget_table([four, three], Scoring(aggregate="curves"), by=("method",))
    other_backbone = ExitOutputs(LOGITS, TEST_LABELS, COSTS, 2 * BACKBONE)
    with pytest.raises(ValueError, match="aggregate='curves' needs the runs of a group to share backbone_cost"):
        budget_table([run([0, 1, 1, 1]), other_backbone], Scoring(aggregate="curves"), by=())


def noisy_views(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits [3, n, 4] of three exits seeing the label through independent noise, and the labels."""
    labels = rng.integers(0, 4, n)
    signal = 1.5 * np.eye(4)[labels]
    return np.stack([signal + rng.normal(0, 1.5, (n, 4)) for _ in range(3)]), labels


def test_ztw_plain_final_ensembles_the_ics_only():
    rng = np.random.default_rng(5)
    (test, test_labels), (val, val_labels) = noisy_views(rng, 200), noisy_views(rng, 150)
    ensembled = ztw_ensemble(test, fit_logits=val, fit_labels=val_labels)
    plain = ztw_ensemble(test, fit_logits=val, fit_labels=val_labels, final="plain")
    np.testing.assert_array_equal(plain[:-1], ensembled[:-1])  # the ICs: the same fits
    np.testing.assert_allclose(plain[-1], log_softmax(test[-1], axis=-1), rtol=1e-6)  # the final exit's own output
    assert exit_accuracy(plain, test_labels)[-1] != exit_accuracy(ensembled, test_labels)[-1]
    with pytest.raises(ValueError, match=r"final must be one of \('ensembled', 'plain'\), got 'ics'"):
        ztw_ensemble(test, fit_logits=val, fit_labels=val_labels, final="ics")

    tags = {"method": "ztw"}
    out = ExitOutputs(test, test_labels, [2.0, 5.0, 11.0], 10.0, val_logits=val, val_labels=val_labels, tags=tags)
    for final, logits in (("ensembled", ensembled), ("plain", plain)):
        curve = sweep(logits, test_labels, out.costs, 10.0)
        assert run_curve(out, Scoring(ztw_final=final)).drop(columns="evaluation").equals(curve)
        table = budget_table([out], Scoring(budgets=(1.0,), ztw_final=final), by=())
        picked = np.flatnonzero(curve["cost_macs"] <= 10.0)[-1]
        assert table["accuracy_mean"].tolist() == [curve["accuracy"].iloc[picked]]
        points = run_points([out], Scoring(budgets=(1.0,), ztw_final=final))
        assert points["accuracy"].tolist() == [curve["accuracy"].iloc[picked]]


def test_rule_comparison_stacks_the_three_readings_and_drops_validation_where_there_is_none() -> None:
    from mexit.evaluate import rule_comparison
    from mexit.evaluate.tables import READINGS
    from mexit.plots import format_budget_table

    rng = np.random.default_rng(0)
    outputs = []
    for seed in range(3):
        logits = rng.normal(size=(3, 200, 5)) + np.arange(3)[:, None, None] * np.eye(5)[rng.integers(0, 5, 200)][None]
        labels = logits[-1].argmax(-1)
        outputs.append(ExitOutputs(logits, labels, [30.0, 60.0, 100.0], 100.0, logits[:, :80], labels[:80], tags={"regime": "mixed", "seed": seed}))
    frame = rule_comparison(outputs, Scoring(budgets=(0.5, 1.0)), by=("regime",))
    assert list(frame.columns[:3]) == ["regime", "reading", "budget"] and frame["reading"].unique().tolist() == list(READINGS)
    for label, options in READINGS.items():
        alone = budget_table(outputs, Scoring(budgets=(0.5, 1.0), **options), by=("regime",))
        assert np.allclose(frame.loc[frame["reading"] == label, "accuracy_mean"], alone["accuracy_mean"], equal_nan=True)
    assert format_budget_table(frame).index.names == ["regime", "reading"]
    two = rule_comparison([*outputs, *(ExitOutputs(o.test_logits, o.test_labels, o.costs, o.backbone_cost, o.val_logits, o.val_labels,
                                                   tags={**o.tags, "regime": "joint"}) for o in outputs)], Scoring(budgets=(1.0,)), by=("regime",))
    assert two["regime"].tolist() == ["mixed"] * 3 + ["joint"] * 3  # group by group, each with its readings in order
    assert two["reading"].tolist() == list(READINGS) * 2
    without = [ExitOutputs(o.test_logits, o.test_labels, o.costs, o.backbone_cost, tags={**o.tags, "regime": "joint"}) for o in outputs]
    frame = rule_comparison([*outputs, *without], Scoring(budgets=(0.5, 1.0)), by=("regime",))
    joint, mixed = frame[frame["regime"] == "joint"], frame[frame["regime"] == "mixed"]
    assert joint["reading"].nunique() == 2 and joint["note"].str.contains("no validation split").all()
    assert mixed["reading"].nunique() == 3 and not mixed["note"].str.contains("no validation split").any()
