"""Verdicts are computed from CIs over seeds; the Table 1 and time claims measure what they say."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mexit import claims
from mexit.claims import Claim, Compared, assess, decide, status_view, table1_claims, time_claims, verdict

BETTER = Claim("better", "A beats B", "test", "A - B", "points")
SIZED = Claim("sized", "A beats B by 1-3", "test", "A - B", "points", kind="within", interval=(1.0, 3.0))


@pytest.mark.parametrize(
    ("claim", "low", "high", "n", "expected"),
    [
        (BETTER, 0.1, 2.0, 3, "held"),
        (BETTER, -2.0, -0.1, 3, "not held"),
        (BETTER, -0.5, 2.0, 3, "inconclusive"),
        (BETTER, 0.0, 2.0, 3, "inconclusive"),  # touching 0 is not above it
        (BETTER, math.nan, math.nan, 1, "untested at this scale"),
        (SIZED, 1.2, 2.9, 5, "held"),
        (SIZED, 1.0, 3.0, 5, "held"),
        (SIZED, 3.5, 6.0, 5, "not held"),
        (SIZED, -1.0, 0.5, 5, "not held"),
        (SIZED, 0.5, 2.0, 5, "inconclusive"),
        (SIZED, 2.0, 4.0, 5, "inconclusive"),
    ],
)
def test_verdict_follows_the_interval(claim: Claim, low: float, high: float, n: int, expected: str) -> None:
    assert verdict(claim, low, high, n) == expected


def _evidence(frame: pd.DataFrame, failing: dict[tuple, str] | None = None, capped: set[tuple] = frozenset()) -> pd.DataFrame:
    """Per-run evidence for the runs of a tidy ``frame`` (its row, [variant,] regime, seed): every run
    converged and stopped early, but ``failing`` ({(regime, seed): why}) and ``capped`` ({(regime, seed)})."""
    tags = [c for c in ("row", "variant", "regime", "seed") if c in frame.columns]
    runs = frame[tags].drop_duplicates().reset_index(drop=True)
    failing = failing or {}
    keys = list(zip(runs["regime"], runs["seed"]))
    return runs.assign(
        converged=[k not in failing for k in keys], learned=True, early_stopped=[k not in capped for k in keys], full_budget=True,
        evidence=[k not in failing for k in keys], why=[failing.get(k, "") for k in keys],
    )


EVIDENCE = pd.DataFrame([{"row": "r", "regime": r, "seed": s, "evidence": True, "early_stopped": True, "why": ""}
                         for r in ("disjoint", "joint", "mixed") for s in range(4)])


def test_a_claim_needs_a_known_kind_and_an_ordered_interval() -> None:
    with pytest.raises(ValueError, match="kind"):
        Claim("k", "s", "src", "m", "u", kind="bigger")
    with pytest.raises(ValueError, match="interval"):
        Claim("k", "s", "src", "m", "u", kind="within", interval=(3.0, 1.0))


def _half(effects: list[float], level: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(1 - (1 - level) / 2, len(effects) - 1) * np.std(effects, ddof=1) / math.sqrt(len(effects)))


def test_decide_computes_the_t_interval_of_the_effects() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    row = decide([assess(claims.MIXED_BEST, [1.0, 2.0, 3.0], "row A", mixed)], EVIDENCE).iloc[0]
    half = _half([1.0, 2.0, 3.0], 1 - 0.05 / 4)  # Table 1's family: four claims a row
    assert row["effect"] == pytest.approx(2.0)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert row["verdict"] == "inconclusive" and row["seeds"] == 3 and row["scale"] == "row A"
    assert row["family"] == "Table 1 (4 claims a row)"
    assert decide([assess(claims.MIXED_BEST, [1.0, 1.1, 0.9, 1.05], "r", mixed)], EVIDENCE).iloc[0]["verdict"] == "held"
    both = decide([assess(claims.MIXED_BEST, [1.0, 2.0, 3.0], "row A", mixed), assess(claims.MIXED_BEST, [5.0, math.nan], "r", mixed)], EVIDENCE)
    one = both.iloc[1]
    assert one["seeds"] == 1 and one["verdict"] == "untested at this scale"
    view = status_view(both, profile="quick")
    assert list(view.columns) == ["reading", "source", "scale", "seeds", "effect [CI]", "CI level", "verdict", "why untested"]
    assert view.index.tolist() == ["Mixed is the best regime overall"] * 2
    assert set(view["reading"]) == {"at convergence"}
    assert view.index.name == "claim (quick profile)" and status_view(both.iloc[:1]).index.name == "claim (custom profile)"
    assert view["effect [CI]"].tolist() == [f"2.0 [{2 - half:.1f}, {2 + half:.1f}] points", "5.0 points (no CI)"]
    assert view["CI level"].tolist() == ["98.75%", "98.75%"]


def test_one_effect_gets_one_interval_and_verdict_whatever_else_a_page_decides() -> None:
    """Families are book-wide: a claim's level is set by its family's size in the catalogue, not by
    how many claims a page decides, so the same effect on the same runs reads the same on every page."""
    mixed = Compared("r", ("joint", "mixed"))
    effects = [1.0, 1.6, 2.2]
    alone = decide([assess(claims.MIXED_AHEAD, effects, "a", mixed)], EVIDENCE).iloc[0]
    crowded = decide([assess(claims.MIXED_AHEAD, effects, "a", mixed), assess(claims.MIXED_AHEAD, [0.1, 0.2, 0.3], "b", mixed),
                      assess(claims.MIXED_AHEAD, [3.0, 2.0, 4.0], "c", mixed), assess(claims.MIXED_AHEAD, [3.0], "d", mixed)], EVIDENCE).iloc[0]
    assert (alone["ci_low"], alone["ci_high"], alone["verdict"]) == (crowded["ci_low"], crowded["ci_high"], crowded["verdict"])
    assert alone["ci_level"] == pytest.approx(1 - 0.05 / len(claims.ABLATION_CLAIMS))
    assert alone["ci_low"] == pytest.approx(1.6 - _half(effects, alone["ci_level"]))
    assert claims.family_of(claims.MIXED_BEATS_JOINT_HIGH) == ("Table 1", 4)
    every = [c for members in claims.FAMILIES.values() for c in members]
    assert sorted(c.key for c in every) == sorted(c.key for c in claims.CLAIMS)  # each claim in exactly one family


def _seeded(values: list[float]) -> pd.Series:
    return pd.Series(values, index=range(len(values)), dtype=float)


def test_a_claim_on_runs_that_are_not_evidence_is_untested() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    measured = [assess(claims.MIXED_BEST, _seeded([5.0, 5.1, 5.2, 5.3]), "r", mixed)]
    truncated = EVIDENCE.assign(evidence=(EVIDENCE["regime"] != "joint") | (EVIDENCE["seed"] != 1),
                                why=["P2: still rising at the cap" if (r, s) == ("joint", 1) else "" for r, s in zip(EVIDENCE["regime"], EVIDENCE["seed"])])
    row = decide(measured, truncated).iloc[0]  # 3 of 4 seeds left, 4 needed
    assert row["verdict"] == "untested: not converged"
    assert row["why"] == ("3 of 4 seeds are evidence, fewer than the 4 a verdict needs; 1 of 8 runs: joint s1: P2: still "
                          "rising at the cap (not evidence per regime: joint 1 of 4, mixed 0 of 4)")
    plain = decide([assess(claims.MIXED_BEST, [5.0, 5.1, 5.2, 5.3], "r", mixed)], truncated).iloc[0]  # no seeds to leave out
    assert plain["verdict"] == "untested: not converged"
    disjoint_only = EVIDENCE.assign(evidence=EVIDENCE["regime"] != "disjoint")  # not compared: no matter
    assert decide(measured, disjoint_only).iloc[0]["verdict"] == "held"
    with pytest.raises(ValueError, match="no run of row 'r'"):
        decide(measured, EVIDENCE.assign(row="other"))


FIVE = pd.DataFrame([{"row": "r", "regime": r, "seed": s, "evidence": True, "early_stopped": True, "learned": True, "full_budget": True, "why": ""}
                     for r in ("joint", "mixed") for s in range(5)])


def test_a_claim_with_one_seed_not_evidence_of_five_is_decided_on_four_with_the_seed_named() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    effects = _seeded([2.0, 2.2, 1.8, 2.1, -30.0])  # seed 4's effect is the truncated run's
    one_out = FIVE.assign(evidence=~((FIVE["regime"] == "joint") & (FIVE["seed"] == 4)),
                          why=["P2: ran to its cap" if (r, s) == ("joint", 4) else "" for r, s in zip(FIVE["regime"], FIVE["seed"])])
    row = decide([assess(claims.MIXED_BEATS_JOINT_HIGH, effects, "r", mixed)], one_out).iloc[0]
    assert row["verdict"] == "held" and row["seeds"] == 4 and row["left_out"] == (4,)
    assert row["effect"] == pytest.approx(np.mean([2.0, 2.2, 1.8, 2.1]))
    assert row["why"].startswith("decided on 4 of 5 seeds, s4 left out: 1 of 10 runs: joint s4: P2: ran to its cap")
    assert "joint 1 of 5, mixed 0 of 5" in row["why"]  # the regime that fails more often is named


def test_a_claim_with_three_seeds_of_five_left_out_is_untested() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    failing = {("joint", 0), ("mixed", 1), ("joint", 3)}
    three_out = FIVE.assign(evidence=[(r, s) not in failing for r, s in zip(FIVE["regime"], FIVE["seed"])],
                            why=["P2: not converged" if (r, s) in failing else "" for r, s in zip(FIVE["regime"], FIVE["seed"])])
    row = decide([assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "r", mixed)], three_out).iloc[0]
    assert row["verdict"] == "untested: not converged" and row["left_out"] == (0, 1, 3)
    assert row["why"].startswith("2 of 5 seeds are evidence, fewer than the 4 a verdict needs")
    assert [claims.seeds_needed(n) for n in (2, 3, 5, 10)] == [2, 3, 4, 8]


def test_an_equal_budget_reading_needs_runs_that_learned_not_converged() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    capped = FIVE.assign(evidence=False, converged=False, learned=True, full_budget=True, why="P2: ended by its schedule")
    at_budget = claims.TABLE1_EQUAL_BUDGET_CLAIMS[0]
    row = decide([assess(at_budget, _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "r", mixed)], capped).iloc[0]
    assert row["verdict"] == "held" and row["family"] == "Table 1 at an equal training budget (4 claims a row)"
    shown = status_view(pd.DataFrame([row]))
    assert shown["reading"].tolist() == ["at an equal training budget"]
    assert shown.index.tolist() == [claims.MIXED_BEATS_JOINT_HIGH.statement]  # the reading is said once, in its column
    chance = capped.assign(learned=(capped["seed"] != 2) & (capped["seed"] != 3))
    assert decide([assess(at_budget, _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "r", mixed)], chance).iloc[0]["verdict"] == "untested: not learned"
    with pytest.raises(ValueError, match="full_budget"):  # a reading at a budget cannot pass runs it cannot check
        decide([assess(at_budget, _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "r", mixed)], capped.drop(columns="full_budget"))


def test_an_equal_budget_reading_leaves_out_runs_that_early_stopping_cut_short() -> None:
    """Early stopping left on for a reading at a stated budget (the phase split with patience): a
    run it ended sooner trained fewer epochs than the budget says, so it is not that reading's evidence."""
    mixed = Compared("r", ("joint", "mixed"))
    at_budget = claims.SPLIT_BEATS_JOINT
    effects = _seeded([2.0, 2.2, 1.8, 2.1, 2.0])

    def stopped(*seeds: int) -> pd.DataFrame:
        short = FIVE["seed"].isin(seeds) & FIVE["regime"].eq("joint")
        return FIVE.assign(learned=True, full_budget=~short, why="")

    one = decide([assess(at_budget, effects, "r", mixed)], stopped(3)).iloc[0]
    assert one["verdict"] == "held" and one["left_out"] == (3,)
    assert "joint s3: a phase ended by early stopping, before its stated epochs" in one["why"]
    two = decide([assess(at_budget, effects, "r", mixed)], stopped(0, 3)).iloc[0]
    assert two["verdict"] == "untested: stopped before the budget" and two["left_out"] == (0, 3)


def test_a_claim_leaves_out_every_failing_seed_whichever_check_it_fails() -> None:
    """A time claim on five seeds, s0 not converged and s1 converged but at its cap: both are left
    out (3 of 5 remain, fewer than the 4 a verdict needs), not only the first check's seed."""
    costs = pd.DataFrame(
        [{"row": "R", "regime": regime, "seed": seed, "steps": wall, "wall_time_s": wall, "train_macs": wall}
         for seed in range(5) for regime, wall in (("joint", 100.0), ("mixed", 73.0))]
    )
    evidence = _evidence(costs, failing={("joint", 0): "P2: still rising"}, capped={("mixed", 1)})
    row = time_claims(costs, evidence).iloc[0]
    assert row["verdict"] == "untested: not converged" and row["left_out"] == (0, 1)
    assert "joint s0: P2: still rising" in row["why"] and "mixed s1: a phase ran to its epoch cap" in row["why"]


def test_a_seed_the_effect_does_not_measure_cannot_block_it() -> None:
    mixed = Compared("r", ("joint", "mixed"))
    untimed = FIVE.assign(evidence=FIVE["seed"] != 4, why=["P2: still rising" if s == 4 else "" for s in FIVE["seed"]])
    row = decide([assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([2.0, 2.2, 1.8, 2.1]), "r", mixed)], untimed).iloc[0]
    assert row["verdict"] == "held" and row["left_out"] == () and row["why"] == ""


def _points(accuracy: dict[str, list[list[float]]], budgets=(0.25, 0.5, 0.75, 1.0)) -> pd.DataFrame:
    """Per-run points: accuracy[regime][seed][budget index]."""
    return pd.DataFrame(
        [
            {"row": "R", "regime": regime, "seed": seed, "budget": budget, "accuracy": values[b]}
            for regime, seeds in accuracy.items()
            for seed, values in enumerate(seeds)
            for b, budget in enumerate(budgets)
        ]
    )


def test_table1_claims_measure_the_stated_differences() -> None:
    points = _points(
        {
            "disjoint": [[50, 70, 80, 85], [52, 71, 81, 86], [51, 69, 79, 84]],
            "joint": [[60, 72, 82, 86], [61, 73, 83, 87], [59, 71, 81, 85]],
            "mixed": [[58, 74, 84, 88], [60, 75, 85, 89], [59, 73, 83, 87]],
        }
    )
    rows = table1_claims(points, _evidence(points)).set_index("key")
    # mixed - joint at 75% and 100%: +2 in every seed
    assert rows.loc["mixed_beats_joint_high", "effect"] == pytest.approx(2.0)
    assert rows.loc["mixed_beats_joint_high", "verdict"] == "held"
    # the worse of joint and mixed at 25% minus disjoint: 58-50, 60-52, 59-51 = 8
    assert rows.loc["disjoint_weak_low", "effect"] == pytest.approx(8.0)
    assert rows.loc["disjoint_weak_low", "verdict"] == "held"
    # mixed's mean over budgets - the better other regime's mean: 76 - 75, 77.25 - 76, 75.5 - 74
    assert rows.loc["mixed_best", "effect"] == pytest.approx(1.25)
    assert rows.loc["mixed_gain_1_3", "effect"] == pytest.approx(2.0)
    assert rows.loc["mixed_gain_1_3", "verdict"] == "held"


def test_table1_claims_use_the_budgets_every_run_can_meet() -> None:
    nan = float("nan")
    points = _points(
        {
            "disjoint": [[nan, 70, 80, 85], [nan, 71, 81, 86], [nan, 69, 79, 84]],
            "joint": [[nan, 72, 82, 86], [nan, 73, 83, 87], [nan, 71, 81, 85]],
            "mixed": [[nan, 74, 84, 88], [nan, 75, 85, 89], [nan, 73, 83, 87]],
        }
    )
    rows = table1_claims(points, _evidence(points)).set_index("key")
    assert rows.loc["disjoint_weak_low", "effect"] == pytest.approx(2.0)  # at 50%: joint 72 - disjoint 70
    assert rows.loc["disjoint_weak_low", "scale"] == "R (budgets 50%)"
    assert rows.loc["mixed_best", "effect"] == pytest.approx(2.0)
    assert rows.loc["mixed_best", "scale"] == "R (budgets 50%, 75%, 100%)"


def test_table1_claims_without_a_regime_are_untested() -> None:
    points = _points({"joint": [[60, 70, 80, 90]] * 3, "mixed": [[61, 71, 81, 91], [62, 72, 82, 92], [60, 70, 80, 90]]})
    rows = table1_claims(points, _evidence(points)).set_index("key")
    assert rows.loc["mixed_beats_joint_high", "verdict"] in claims.VERDICTS[:3]
    for key in ("disjoint_weak_low", "mixed_best", "mixed_gain_1_3"):
        assert rows.loc[key, "verdict"] == "untested at this scale"


def test_measures_say_how_each_claim_is_measured_and_held() -> None:
    points = _points({"disjoint": [[50, 70, 80, 85]] * 2, "joint": [[60, 72, 82, 86]] * 2, "mixed": [[58, 74, 84, 88]] * 2})
    view = claims.measures_view(table1_claims(points, _evidence(points)))
    assert len(view) == 4
    assert view.loc["Mixed is 1-3% more accurate at higher budgets", "held when"] == "the CI lies within [1, 3] points"
    assert view.loc["Mixed is the best regime overall", "held when"] == "the CI lies above 0 points"


def test_time_claim_is_the_saving_of_mixed_over_joint() -> None:
    costs = pd.DataFrame(
        [
            {"row": "R", "regime": regime, "seed": seed, "steps": steps, "wall_time_s": 1000.0 - steps, "train_macs": 5 * steps}
            for seed, (joint, mixed) in enumerate([(100.0, 73.0), (200.0, 146.0), (50.0, 36.5)])
            for regime, steps in (("joint", joint), ("mixed", mixed))
        ]
    )
    steps, macs = time_claims(costs, _evidence(costs)).to_dict("records")  # whatever the wall time
    assert steps["key"] == "mixed_time_27" and macs["key"] == "mixed_time_27_macs"
    assert "optimiser steps" in steps["measure"] and "training MACs" in macs["measure"]
    for row in (steps, macs):
        assert row["effect"] == pytest.approx(27.0) and row["seeds"] == 3
        assert row["verdict"] == "held"  # every seed saves exactly 27%: a zero-width interval inside [17, 37]
    slower = costs.assign(steps=np.where(costs["regime"] == "mixed", costs["steps"] * 2, costs["steps"]))
    assert time_claims(slower, _evidence(slower))["verdict"].tolist() == ["not held", "held"]  # each unit read on its own


# --- the analysis pages' claims --------------------------------------------------------------------


def test_depth_thirds_split_the_blocks_into_early_middle_and_deep() -> None:
    assert claims.depth_thirds(9) == ([1, 2, 3], [4, 5, 6], [7, 8, 9])
    assert claims.depth_thirds(5) == ([1], [2, 3], [4, 5])
    assert claims.depth_thirds(3) == ([1], [2], [3])
    assert claims.depth_thirds(1) == ([], [], [1])  # 1 > 2/3: a lone block is deep
    with pytest.raises(ValueError, match="blocks"):
        claims.depth_thirds(0)


def _probes(regime: str, seed: int, final_share: float) -> pd.DataFrame:
    """End-of-P2 probes of a 3-block model with exits after blocks 1, 2, 3: at the middle block 2
    the IC after block 2 takes 1 - final_share, the final head final_share."""
    rows = [
        {"block": 1, "exit_block": 1, "share": 0.5}, {"block": 1, "exit_block": 2, "share": 0.25},
        {"block": 1, "exit_block": 3, "share": 0.25},
        {"block": 2, "exit_block": 2, "share": 1 - final_share}, {"block": 2, "exit_block": 3, "share": final_share},
        {"block": 3, "exit_block": 3, "share": 1.0},
    ]
    return pd.DataFrame(rows).assign(row="r", regime=regime, seed=seed)


def test_dominance_claims_measure_the_ics_lead_and_the_depth_shift() -> None:
    end = pd.concat(
        [_probes("joint", s, f) for s, f in enumerate((0.2, 0.3, 0.6))]
        + [_probes("mixed", s, f) for s, f in enumerate((0.7, 0.8, 0.75))]
    )
    result = claims.dominance_claims(end, _evidence(end)).set_index("key")
    # joint: the IC's share minus the final head's at block 2 = 60, 40 and -20 points of the gradient
    # (the final head leads in seed 2: it is no IC)
    assert result.loc["joint_ics_dominate_middle", "effect"] == pytest.approx(80 / 3)
    assert result.loc["joint_ics_dominate_middle", "verdict"] == "inconclusive"
    # one IC reaches block 2, so all ICs together are the largest one
    assert result.loc["joint_ics_together_dominate_middle", "effect"] == pytest.approx(80 / 3)
    two = end.copy()
    two.loc[(two["block"] == 2) & (two["exit_block"] == 2), "share"] /= 2  # the IC's share split between two ICs
    extra = two[(two["block"] == 2) & (two["exit_block"] == 2)].assign(exit_block=1)
    both = claims.dominance_claims(pd.concat([two, extra]), _evidence(end)).set_index("key")
    assert both.loc["joint_ics_together_dominate_middle", "effect"] == pytest.approx(80 / 3)  # together: as before
    assert both.loc["joint_ics_dominate_middle", "effect"] < 80 / 3  # the largest alone: half of it
    # depth in % of 3 blocks: (2 (1 - f) + 3 f) / 3 * 100; mixed - joint = (f_m - f_j) / 3 * 100
    assert result.loc["mixed_deeper_dominate", "effect"] == pytest.approx((0.5 + 0.5 + 0.15) / 3 / 3 * 100)
    assert result.loc["mixed_deeper_dominate", "scale"] == "r (blocks 2 of 3)"


def test_connectivity_claims_read_the_final_exits_linear_error_barrier() -> None:
    barriers = pd.DataFrame(
        [
            {"row": "r", "seed": s, "pair": pair, "path": path, "exit": e, "error_barrier": value + (100 if e == 0 or path == "bezier" else 0)}
            for s in range(3)
            for pair, value in (("disjoint–mixed", 0.5 + 0.1 * s), ("joint–mixed", 10.0 + s))
            for path in ("linear", "bezier")
            for e in (0, 1)
        ]
    )
    result = claims.connectivity_claims(barriers, _evidence(barriers.assign(regime=barriers['pair'].str.split('–')).explode('regime'))).set_index("key")
    assert result.loc["disjoint_mixed_one_basin", "effect"] == pytest.approx(0.6)
    assert result.loc["disjoint_mixed_one_basin", "verdict"] == "held"
    assert result.loc["joint_other_basin", "effect"] == pytest.approx(11.0)
    assert result.loc["joint_other_basin", "verdict"] == "held"


def test_rank_and_information_claims_compare_mixed_with_joint_by_seed() -> None:
    rows = []
    for seed in range(3):
        for block in (1, 2, 3):
            for regime, rank, bits in (("joint", 50 + 10 * block, 1.0), ("mixed", 60 + seed, 1.5 + 0.1 * seed)):
                rows.append({"row": "r", "regime": regime, "seed": seed, "block": block, "rank_pct": rank, "label_bits": bits})
    table = pd.DataFrame(rows)
    ranks = claims.rank_claims(table, _evidence(table)).set_index("key")
    assert ranks.loc["rank_early_higher", "effect"] == pytest.approx(1.0)  # (60 + s) - 60 at block 1, mean 1
    assert ranks.loc["rank_deep_lower", "effect"] == pytest.approx(80 - 61)  # joint 80 - mixed 60 + s at block 3
    assert ranks.loc["rank_deep_lower", "verdict"] == "held"
    information = claims.information_claims(table, _evidence(table)).set_index("key")
    assert information.loc["mixed_deep_label_information", "effect"] == pytest.approx(0.6)
    assert information.loc["mixed_deep_label_information", "scale"] == "r (blocks 3)"


def test_one_sided_intervals_read_as_below_and_above() -> None:
    rows = decide([assess(claims.DISJOINT_MIXED_ONE_BASIN, [0.1, 0.2], "r", Compared("r", ("disjoint", "mixed"))),
                   assess(claims.JOINT_OTHER_BASIN, [5.0, 6.0], "r", Compared("r", ("joint", "mixed")))], EVIDENCE)
    held = claims.measures_view(rows)["held when"].tolist()
    assert held == ["the CI lies below 2 points", "the CI lies above 2 points"]


def _variant_points(accuracy: dict[tuple[str, str], list[list[float]]], budgets=(0.5, 1.0)) -> pd.DataFrame:
    """Per-run points of an ablation: accuracy[(variant, regime)][seed][budget index]."""
    return pd.DataFrame(
        [
            {"row": "R", "variant": variant, "regime": regime, "seed": seed, "budget": budget, "accuracy": values[b]}
            for (variant, regime), seeds in accuracy.items()
            for seed, values in enumerate(seeds)
            for b, budget in enumerate(budgets)
        ]
    )


def test_ablation_claims_compare_mixed_per_variant_and_each_variant_with_the_first() -> None:
    nan = float("nan")
    points = _variant_points(
        {
            ("small", "disjoint"): [[50, 60], [52, 62], [51, 61]],
            ("small", "mixed"): [[55, 66], [56, 67], [57, 68]],
            ("large", "disjoint"): [[nan, 64], [nan, 66], [nan, 66]],  # no point at 50% with the large head
            ("large", "mixed"): [[54, 60], [55, 61], [56, 61]],
        }
    )
    rows = claims.ablation_claims(points, _evidence(points), (claims.LARGER_ICS_HELP_DISJOINT, "disjoint", "disjoint"))
    ahead = rows[rows["key"] == "mixed_ahead"].set_index("scale")
    # small: mixed - disjoint averaged over 50% and 100%: 5.5, 4.5, 6.5
    assert ahead.loc["R, small (budgets 50%, 100%)", "effect"] == pytest.approx(5.5)
    assert ahead.loc["R, small (budgets 50%, 100%)", "verdict"] == "held"
    # large: only 100% fits every run: 60 - 64, 61 - 66, 61 - 66
    assert ahead.loc["R, large (budgets 100%)", "effect"] == pytest.approx(-14 / 3)
    assert ahead.loc["R, large (budgets 100%)", "verdict"] == "not held"
    change = rows[rows["key"] == "larger_ics_help_disjoint"].iloc[0]
    # disjoint with large - with small at the budgets both meet (100%): 4, 4, 5
    assert change["effect"] == pytest.approx(13 / 3) and change["verdict"] == "held"
    assert change["scale"] == "R, disjoint with large vs disjoint with small (budgets 100%)"


def test_ablation_claims_compare_across_regimes_and_skip_variants_without_a_rival() -> None:
    points = _variant_points(
        {
            ("0:100", "joint"): [[60, 70], [61, 71], [62, 72]],
            ("50:50", "mixed"): [[61, 72], [62, 72], [62, 74]],
        }
    )
    rows = claims.ablation_claims(points, _evidence(points), (claims.SPLIT_BEATS_JOINT, "mixed", "joint"))
    assert list(rows["key"]) == ["split_beats_joint"]  # no variant trains mixed beside another regime
    assert rows["effect"].iloc[0] == pytest.approx((1.5 + 1 + 1) / 3)
    assert claims.ablation_claims(points, _evidence(points)).empty
    assert list(claims.ablation_claims(points, _evidence(points)).columns) == list(rows.columns)


def test_scaling_is_unneeded_when_no_variant_gains_a_point() -> None:
    points = _variant_points(
        {
            ("uniform", "mixed"): [[70, 80], [71, 81], [72, 82]],
            ("linear", "mixed"): [[69, 79], [71, 80], [71, 82]],
        }
    )
    row = claims.ablation_claims(points, _evidence(points), (claims.SCALING_UNNEEDED_WITH_MIXED, "mixed", "mixed")).iloc[0]
    assert row["effect"] == pytest.approx(-2 / 3) and row["verdict"] == "held"  # the CI lies below +1 point


def test_the_time_claim_on_phases_that_ran_to_their_caps_is_untested() -> None:
    costs = pd.DataFrame(
        [{"row": "R", "regime": regime, "seed": seed, "steps": wall, "wall_time_s": wall, "train_macs": wall}
         for seed in range(3) for regime, wall in (("joint", 100.0), ("mixed", 73.0))]
    )
    capped = time_claims(costs, _evidence(costs, capped={("mixed", 0)})).iloc[0]
    assert capped["verdict"] == "untested: phases ended at the cap"
    assert capped["why"].startswith("2 of 3 seeds are evidence, fewer than the 3 a verdict needs; 1 of 6 runs: mixed s0: a phase ran to its epoch cap")
    at_chance = time_claims(costs, _evidence(costs, failing={("joint", 2): "exits at chance"})).iloc[0]
    assert at_chance["verdict"] == "untested: not converged"  # convergence is checked first


def test_agreement_sets_the_books_verdicts_beside_a_fresh_seed_sets() -> None:
    book = _points({"disjoint": [[50, 70, 80, 85]] * 3, "joint": [[60, 72, 82, 86], [61, 73, 83, 87], [59, 71, 81, 85]],
                    "mixed": [[58, 74, 84, 88], [60, 75, 85, 89], [59, 73, 83, 87]]})
    fresh = _points({"disjoint": [[50, 70, 80, 85]] * 3, "joint": [[60, 72, 82, 86], [61, 73, 83, 87], [59, 71, 81, 85]],
                     "mixed": [[58, 74, 84, 88], [60, 75, 80, 80], [59, 73, 83, 87]]})
    together = claims.agreement(table1_claims(book, _evidence(book)), table1_claims(fresh, _evidence(fresh))).set_index("claim")
    assert list(together.columns) == ["scale", "book seeds", "fresh seeds", "the fresh seeds"]
    high = together.loc["Mixed is more accurate than joint at high budgets"]
    assert (high["book seeds"], high["fresh seeds"], high["the fresh seeds"]) == ("held", "inconclusive", "not confirmed (interval)")
    low = together.loc["Disjoint is the weakest regime at low budgets"]
    assert low["book seeds"] == low["fresh seeds"]
    assert low["the fresh seeds"] == ("confirmed" if low["book seeds"] in ("held", "not held") else "–")
    counts = claims.agreement_counts(together.reset_index())
    assert counts["compared"] == len(together) and counts["not_confirmed"] >= 1 and counts["agree"] <= counts["compared"] - 1


@pytest.mark.parametrize(
    ("book", "fresh", "reading"),
    [
        ("held", "held", "confirmed"),
        ("not held", "not held", "confirmed"),
        ("held", "not held", "contradicted"),
        ("held", "inconclusive", "not confirmed (interval)"),
        ("not held", claims.NOT_CONVERGED, "not confirmed (runs not evidence)"),
        ("held", claims.NO_INTERVAL, "not confirmed (runs not evidence)"),
        ("inconclusive", "held", "–"),
        (claims.NOT_CONVERGED, "held", "–"),
        ("held", None, "–"),
    ],
)
def test_a_fresh_set_of_seeds_confirms_contradicts_or_leaves_a_verdict_unconfirmed(book: str, fresh: str | None, reading: str) -> None:
    assert claims.fresh_reading(book, fresh) == reading


def test_the_headline_names_both_readings_per_row() -> None:
    mixed = Compared("R", ("joint", "mixed"))
    evidence = FIVE.assign(row="R")
    at_convergence = assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([0.5, -0.5, 1.0, -1.0, 0.2]), "R (budgets 75%, 100%)", mixed)
    at_budget = assess(claims.TABLE1_EQUAL_BUDGET_CLAIMS[0], _seeded([2.0, 2.2, 1.8, 2.1, 2.0]), "R (budgets 75%, 100%)", mixed)
    table = claims.headline(pd.concat([decide([at_convergence], evidence), decide([at_budget], evidence)]))  # as a page concatenates them
    assert table.index.tolist() == [("R", "at convergence"), ("R", "at an equal training budget")]
    assert table["verdict"].tolist() == ["inconclusive", "held"] and table["seeds"].tolist() == [5, 5]
    assert table.iloc[1, 0].startswith("2.0 [") and table.iloc[1, 0].endswith("points")
    assert claims.headline(decide([], evidence)).empty
    unconverged = evidence.assign(evidence=False, why="P2: not converged")
    blocked = claims.headline(decide([at_convergence], unconverged))
    assert blocked["verdict"].tolist() == [claims.NOT_CONVERGED] and blocked.iloc[0, 0] == "–"  # no interval over runs that are not evidence
    both = pd.concat([decide([at_convergence], evidence), decide([at_budget], evidence)])
    assert claims.headline_sentence(both) == (
        "\u201cMixed is more accurate than joint at high budgets\u201d is held on 1 of the 2 rows and readings of this build "
        "(inconclusive on 1): this build confirms it on some rows and readings only."
    )
    assert claims.headline_sentence(decide([at_convergence], evidence)).endswith("held on 0 of the 1 rows and readings of this build "
                                                                              "(inconclusive on 1): this build does not confirm it at this scale.")
    against = assess(claims.MIXED_BEATS_JOINT_HIGH, _seeded([-2.0, -2.1, -1.9, -2.0, -2.2]), "R (budgets 75%, 100%)", mixed)
    assert claims.headline_sentence(decide([against], evidence)).endswith("(not held on 1): this build contradicts it.")
    assert claims.headline_sentence(decide([at_budget], evidence)).endswith("held on 1 of the 1 rows and readings of this build: this build confirms it.")
    assert claims.headline_sentence(decide([], evidence)).startswith("No row of this build tests")


def test_the_loss_scaling_claims_under_each_exit_rule_are_one_family() -> None:
    """Open question 3: the ablation's claims re-decided rule by rule, one book-wide family (its
    level set by the family's two claims, not by the rules), each row naming its rule."""
    points = _variant_points(
        {
            ("uniform", "joint"): [[60, 70], [61, 71], [62, 72]],
            ("uniform", "mixed"): [[64, 75], [65, 76], [66, 77]],
            ("equilibrium", "joint"): [[63, 73], [64, 74], [64, 75]],
            ("equilibrium", "mixed"): [[64, 74], [65, 76], [66, 76]],
        }
    )
    by_rule = {"maxprob": points, "entropy": points.assign(accuracy=points["accuracy"] - 1)}
    change = (claims.SCALING_UNNEEDED_WITH_MIXED, "mixed", "mixed")
    rows = claims.rule_ablation_claims(by_rule, _evidence(points), change)
    assert rows["rule"].tolist() == ["maxprob"] * 3 + ["entropy"] * 3
    assert set(rows["key"]) == {"mixed_ahead_rules", "scaling_unneeded_with_mixed_rules"}
    assert rows["scale"].str.endswith("; rule: entropy").sum() == 3
    plain = claims.ablation_claims(points, _evidence(points), change)
    assert rows["effect"].iloc[:3].tolist() == pytest.approx(plain["effect"].tolist())  # the same effects, rule by rule
    assert (rows["ci_level"] == 1 - 0.05 / 2).all()  # the family's two claims, whatever the number of rules
    assert claims.family_of(claims.RULE_ABLATION_CLAIMS[0]) == ("exit rules x loss scaling", 2)
