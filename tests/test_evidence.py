"""A run is evidence only when early stopping ended each phase (a phase at its cap is described, a
plateau, a schedule's end or still rising, but is not evidence) and it learned more than chance;
tested on built curves and on tiny runs through the study. The plateau test's error rates are
measured against the rest of early-stopped curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mexit import claims
from mexit.evaluate import run_points
from mexit.evaluate.evidence import evidence_view, gate_errors, learned, noise_tolerance, phase_ending, phase_view, plateau, run_evidence
from mexit.config import ParameterError
from mexit.study import make_study

RISING = [40, 50, 58, 64, 68, 71, 73, 75, 77, 79]  # still gaining 2 points an evaluation at the cap
FLAT = [40, 60, 70, 75, 77, 78, 77.5, 78.2, 77.8, 78.0, 78.4, 77.9]  # +0.4 over the last 5


def test_a_curve_still_rising_at_the_cap_is_no_plateau() -> None:
    flat, gain = plateau(RISING, window=5)
    assert not flat and gain == pytest.approx(79 - 68)
    assert phase_ending(RISING, stopped_early=False, window=5) == (
        "not converged", "still rising at the cap (+11.0 points in its last 5 evaluations, tolerance 1.0)")


def test_a_curve_that_levelled_off_before_the_cap_is_a_plateau() -> None:
    flat, gain = plateau(FLAT, window=5)
    assert flat and gain == pytest.approx(78.4 - 78.0)
    assert phase_ending(FLAT, stopped_early=False, window=5)[0] == "plateau"
    assert not plateau(FLAT, window=5, tolerance=0.3)[0]  # a stricter tolerance sees the +0.4


def test_the_tolerance_is_the_validation_splits_noise_at_the_best_value() -> None:
    assert noise_tolerance(80.0, 400) == pytest.approx(2.0)  # 100 sqrt(0.8 x 0.2 / 400)
    assert noise_tolerance(80.0, 40_000) == 1.0  # a large split resolves less than a point: the floor
    assert noise_tolerance(100.0, 400) == 1.0
    with pytest.raises(ValueError, match="val_size"):
        noise_tolerance(80.0, 0)
    gained = [70, 76, 78, 78, 78, 78, 78, 79.8]  # +1.8 on 400 images: within the noise
    assert phase_ending(gained, stopped_early=False, window=5, tolerance=noise_tolerance(79.8, 400))[0] == "plateau"
    assert phase_ending(gained, stopped_early=False, window=5, tolerance=noise_tolerance(79.8, 10_000))[0] == "not converged"


def test_early_stopping_ends_a_phase_converged_and_a_short_or_missing_curve_does_not() -> None:
    assert phase_ending(RISING[:3], stopped_early=True, window=10) == ("early stopping", "early stopping")
    short = phase_ending(FLAT[:5], stopped_early=False, window=5)
    assert short == ("not converged", "too few evaluations for a 5-evaluation plateau (5)")
    assert phase_ending([], stopped_early=False, window=5) == ("not converged", "no validation curve")
    with pytest.raises(ValueError, match="window"):
        plateau(FLAT, window=0)


def test_a_model_at_chance_has_not_learned() -> None:
    labels = np.repeat(np.arange(10), 50)  # 500 labels, 10 balanced classes: chance is 10%
    assert learned(10.0, labels) == (False, 10.0)
    margin = 100 * 3 * math.sqrt(0.1 * 0.9 / 500)  # three binomial standard errors: 4.0 points
    assert not learned(10.0 + margin - 0.1, labels)[0] and learned(10.0 + margin + 0.1, labels)[0]
    skewed = np.array([0] * 80 + [1] * 20)  # chance is the most frequent class, not 1 / classes
    assert learned(60.0, skewed) == (False, 80.0)


def _trace(curves: dict[str, list[float]]) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame({"phase": phase, "val_acc_0": curve, "val_acc_1": curve}) for phase, curve in curves.items()],
        ignore_index=True,
    )


def test_run_evidence_names_each_phase_that_did_not_converge() -> None:
    phases = pd.DataFrame([
        {"phase": "P1", "stopped_early": True, "epochs_run": 3, "epoch_cap": 30},
        {"phase": "P2", "stopped_early": False, "epochs_run": 10, "epoch_cap": 10},
    ])
    labels = np.repeat(np.arange(10), 50)
    summary, per_phase = run_evidence(_trace({"P1": RISING[:3], "P2": RISING}), phases, [[1], [0, 1]], 5, [60.0, 79.0], labels, 10_000)
    assert summary == {"converged": False, "learned": True, "early_stopped": False, "full_budget": False, "evidence": False,
                       "why": "P2: still rising at the cap (+11.0 points in its last 5 evaluations, tolerance 1.0)"}
    assert per_phase[["phase", "epochs_run", "epoch_cap", "ending"]].values.tolist() == [
        ["P1", 3, 30, "early stopping"], ["P2", 10, 10, "not converged"]]
    view = phase_view(per_phase.assign(row="r", regime="mixed"))
    assert view.loc[("r", "mixed", "P2")].tolist() == [10.0, 10, "0 of 1", "0 of 1", "0 of 1", "0 of 1", "1 of 1"]
    stopped = phases.assign(stopped_early=True)
    at_chance, _ = run_evidence(_trace({"P1": RISING[:3], "P2": FLAT}), stopped, [[1], [0, 1]], 5, [10.0, 11.0], labels, 400)
    assert at_chance["converged"] and not at_chance["evidence"]
    fixed, _ = run_evidence(_trace({"P1": RISING[:3], "P2": RISING}), phases.assign(stopped_early=False), [[1], [0, 1]], 5,
                            [60.0, 79.0], labels, 10_000)
    assert fixed["full_budget"] and not fixed["early_stopped"]  # no phase cut short: each trained its stated epochs
    assert at_chance["why"] == "exits at chance (best 11.0% against 10.0%)"


def test_evidence_view_counts_the_runs_per_group() -> None:
    evidence = pd.DataFrame([
        {"row": "r", "regime": "joint", "seed": s, "converged": s != 1, "learned": True, "early_stopped": False,
         "full_budget": True, "evidence": s != 1, "why": "P2: still rising" if s == 1 else ""}
        for s in range(3)
    ])
    view = evidence_view(evidence)
    assert view.loc[("r", "joint")].tolist() == ["2 of 3", "0 of 3", "s1: P2: still rising"]
    both = evidence_view(evidence.assign(evidence=evidence["seed"] == 0, why=["", "P2: x", "P2: x"]))
    assert both.loc[("r", "joint"), "not evidence"] == "s1, s2: P2: x"
    with pytest.raises(ValueError, match="lacks columns"):
        evidence_view(evidence.drop(columns="why"))


def test_evidence_view_at_a_stated_budget_counts_the_runs_that_learned_it() -> None:
    """The view a fixed-budget verdict rests on counts the runs that learned and trained the stated
    budget (no phase cut short by early stopping) and names why the others did not, whatever
    their phases' endings."""
    evidence = pd.DataFrame([
        {"row": "r", "regime": "mixed", "seed": s, "converged": False, "learned": s != 2, "early_stopped": False,
         "full_budget": True, "evidence": False,
         "why": "P1, P2: ended by its schedule" + ("; exits at chance (best 11.0% against 10.0%)" if s == 2 else "")}
        for s in range(3)
    ])
    view = evidence_view(evidence, needs="learned")
    assert list(view.columns) == ["runs that learned at the stated budget", "not evidence"]
    assert view.loc[("r", "mixed")].tolist() == ["2 of 3", "s2: exits at chance (best 11.0% against 10.0%)"]
    assert evidence_view(evidence.assign(learned=True), needs="learned").loc[("r", "mixed"), "not evidence"] == "–"
    cut_short = evidence_view(evidence.assign(full_budget=evidence["seed"] != 0), needs="learned").loc[("r", "mixed")]
    assert cut_short.tolist() == ["1 of 3", "s0: a phase ended by early stopping, before its stated epochs; "
                                            "s2: exits at chance (best 11.0% against 10.0%)"]
    assert evidence_view(evidence, needs="early_stopping").loc[("r", "mixed"), "evidence runs (converged, learned)"] == "0 of 3"
    with pytest.raises(ValueError, match="needs must be one of"):
        evidence_view(evidence, needs="converged")


def test_one_epoch_of_the_tiny_config_decides_no_claim(tmp_path: Path) -> None:
    """Tiny runs (one epoch: one evaluation a phase) are no evidence: every claim is untested."""
    s = make_study(rows=[{"label": "tiny", "config": "tiny"}], seeds=[0, 1], regimes=["disjoint", "joint", "mixed"], runs_root=str(tmp_path))
    evidence, phases = s.evidence()
    assert len(evidence) == 6 and not evidence["evidence"].any()
    assert set(phases["phase"]) == {"P1", "P2", "P3"} and not phases["converged"].any()
    assert evidence["why"].str.contains("ended by its schedule").all()  # the tiny config's cosine reaches 0 at its one epoch
    assert evidence.loc[evidence["regime"] == "disjoint", "why"].tolist() == [
        "P1, P3: ended by its schedule (learning rate annealed to about zero at the cap); not checked by a longer schedule"] * 2
    status = claims.table1_claims(run_points(s.outputs(), s.scoring), evidence)
    assert set(status["verdict"]) == {"untested: not converged"}
    time = claims.time_claims(s.phase_costs().groupby(["row", "regime", "seed"], as_index=False)[["wall_time_s", "steps", "train_macs"]].sum(), evidence)
    assert time["verdict"].tolist() == ["untested: not converged"] * 2


def test_a_claim_is_decided_only_on_runs_whose_built_curves_converged() -> None:
    """From curves to verdict: a run still rising at its cap, or one at chance, leaves the claim
    untested; the same effects on converged runs above chance get a verdict."""
    labels = np.repeat(np.arange(10), 50)

    def evidence(joint_curve: list[float], joint_accuracy: float, joint_stopped: bool = True) -> pd.DataFrame:
        rows = []
        for regime, curve, accuracy, stopped in (("joint", joint_curve, joint_accuracy, joint_stopped), ("mixed", FLAT, 80.0, True)):
            phases = pd.DataFrame([{"phase": "P2", "stopped_early": stopped, "epochs_run": len(curve), "epoch_cap": 100 if stopped else len(curve)}])
            for seed in range(3):
                summary, _ = run_evidence(_trace({"P2": curve}), phases, [[0, 1]], 5, [accuracy], labels, 400)
                rows.append({"row": "r", "regime": regime, "seed": seed, **summary})
        return pd.DataFrame(rows)

    measured = [claims.assess(claims.MIXED_BEATS_JOINT_HIGH, [2.0, 2.2, 2.4], "r", claims.Compared("r", ("joint", "mixed")))]
    assert claims.decide(measured, evidence(FLAT, 78.0)).iloc[0]["verdict"] == "held"
    rising = [*RISING, 81, 83]  # 12 evaluations, +6 points in the last 5
    truncated = claims.decide(measured, evidence(rising, 78.0, joint_stopped=False)).iloc[0]
    assert truncated["verdict"] == "untested: not converged"
    assert truncated["why"].startswith("3 of 6 runs: joint s0, joint s1, joint s2: P2: still rising at the cap")
    at_chance = claims.decide(measured, evidence(FLAT, 10.0)).iloc[0]
    assert at_chance["verdict"] == "untested: not converged" and "exits at chance" in at_chance["why"]


def test_a_phase_at_its_cap_is_not_evidence_however_flat() -> None:
    """A cosine schedule annealed to zero at the cap flattens every curve there: ended by its
    schedule; a flat curve at the cap of a constant learning rate is described, not trusted."""
    labels = np.repeat(np.arange(10), 50)
    at_cap = pd.DataFrame([{"phase": "P2", "stopped_early": False, "epochs_run": 12, "epoch_cap": 12}])
    annealed, per_phase = run_evidence(_trace({"P2": FLAT}), at_cap, [[0, 1]], 5, [80.0], labels, 400, annealed=[True])
    assert not annealed["evidence"] and per_phase["ending"].tolist() == ["schedule end"]
    assert annealed["why"] == "P2: ended by its schedule (learning rate annealed to about zero at the cap); not checked by a longer schedule"
    constant, per_phase = run_evidence(_trace({"P2": FLAT}), at_cap, [[0, 1]], 5, [80.0], labels, 400, annealed=[False])
    assert not constant["evidence"] and per_phase["ending"].tolist() == ["plateau"]
    assert "not ended by early stopping" in constant["why"]
    stopped, _ = run_evidence(_trace({"P2": FLAT}), at_cap.assign(stopped_early=True), [[0, 1]], 5, [80.0], labels, 400, annealed=[True])
    assert stopped["evidence"]  # early stopping ends it, whatever the schedule


def test_the_plateau_tests_errors_are_counted_against_the_rest_of_the_curve() -> None:
    """A curve that rises by 10 points after a flat stretch: cuts in the stretch are truncated
    (the rest gains), and a plateau test lets them through; cuts after the rise are converged."""
    step = [50.0] * 8 + [60.0] * 8  # val split of 10,000 images: tolerance 1 point
    errors = gate_errors([step], window=3, val_size=10_000)
    # cuts 4..15: before the rise (cuts 4-8) truncated, called a plateau: missed; cut 9 sees the rise
    # in its last 3 (not a plateau: a false alarm), cuts 10-11 too; 12-15 are plateaus: right
    assert (errors["truncated_cuts"], errors["converged_cuts"]) == (5, 7)
    assert errors["missed"] == pytest.approx(100.0) and errors["false_alarm"] == pytest.approx(100 * 3 / 7)
    assert gate_errors([step], window=3, val_size=10_000, scale=20.0)["false_alarm"] == 0.0  # a lax test: no false alarms
    assert math.isnan(gate_errors([[50.0, 51.0]], window=3, val_size=400)["missed"])  # no cut at all



def test_a_phase_its_schedule_ended_is_evidence_only_when_a_longer_schedule_gains_no_more() -> None:
    """The longer-schedule check: the same run retrained with a stretched schedule; within the noise
    tolerance of the validation split (one standard error at the best, at least 1 point) the phase
    had converged, beyond it the schedule cut it short."""
    labels = np.repeat(np.arange(10), 50)
    at_cap = pd.DataFrame([{"phase": "P2", "stopped_early": False, "epochs_run": 12, "epoch_cap": 12}])
    same = [*FLAT, *FLAT[-12:]]  # twice as long, no higher
    checked, per_phase = run_evidence(_trace({"P2": FLAT}), at_cap, [[0, 1]], 5, [80.0], labels, 400, [True], _trace({"P2": same}))
    assert checked["evidence"] and per_phase["ending"].tolist() == ["schedule checked"]
    assert per_phase["ended"].iloc[0].endswith("a longer schedule gains +0.0 points, tolerance 2.1")
    higher = [*FLAT, *(v + 3 for v in FLAT[-12:])]  # the longer schedule gains 3 points, above one standard error (2.1)
    cut, per_phase = run_evidence(_trace({"P2": FLAT}), at_cap, [[0, 1]], 5, [80.0], labels, 400, [True], _trace({"P2": higher}))
    assert not cut["evidence"] and per_phase["ending"].tolist() == ["schedule end"]
    assert "not converged: a longer schedule gains +3.0 points" in cut["why"]
    no_split = phase_ending([], stopped_early=False, window=5, annealed=True, longer=FLAT)  # trained on every image: no curve
    assert no_split == ("schedule end", "ended by its schedule (learning rate annealed to about zero at the cap); "
                                        "no validation curve, so a longer schedule cannot check it")


def test_a_study_checks_the_phases_its_schedules_ended_on_stretched_runs(tmp_path) -> None:
    from mexit.plan import page_runs
    from mexit.study import make_study, stretched

    rows = [{"label": "tiny", "config": "tiny", "overrides": []}]
    s = make_study(rows=rows, seeds=[0], regimes=["joint"], runs_root=str(tmp_path), longer_schedule=2)
    (row, config), = s.configs()
    (_, twin), = s.schedule_checks()  # the tiny config anneals its cosine to zero at its one epoch
    assert twin == stretched(config, 2) and twin.train.phase_epochs == tuple(2 * e for e in config.train.phase_epochs)
    labels = [label for label, _ in page_runs({"rows": rows, "seeds": [0], "regimes": ["joint"], "longer_schedule": 2}, tmp_path)]
    assert len(labels) == 2 and "longer schedule" in labels[1]
    evidence, phases = s.evidence()  # trains the run and its twin
    assert phases["ending"].iloc[0] in ("schedule checked", "schedule end")
    assert "a longer schedule gains" in phases["ended"].iloc[0]
    assert len(list((tmp_path / "runs").iterdir())) == 2
    authors = [{**rows[0], "overrides": ["train.stopping=restore-on-stop", "train.patience=null"]}]  # every image trains
    assert make_study(rows=authors, seeds=[0], regimes=["joint"], runs_root=str(tmp_path), longer_schedule=2).schedule_checks() == []
    with pytest.raises(ParameterError, match="longer_schedule must be null or an integer factor >= 2, got 1"):
        make_study(rows=rows, seeds=[0], regimes=["joint"], runs_root=str(tmp_path), longer_schedule=1)
