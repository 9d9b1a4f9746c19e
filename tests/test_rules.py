"""The same runs under other early-exit rules: budget tables and the Table 1 claims per rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mexit import claims
from mexit.evaluate import ExitOutputs, Scoring, budget_table, run_points
from mexit.evaluate.rules import EXIT_RULES, rule_tables, under_rule


def _runs() -> list[ExitOutputs]:
    """Disjoint, joint and mixed, three seeds: four exits over five classes, later exits more
    often right, mixed the most accurate."""
    runs = []
    for regime, skill in (("disjoint", 0.8), ("joint", 1.0), ("mixed", 1.4)):
        for seed in range(3):
            rng = np.random.default_rng(10 * seed + len(regime))
            labels = rng.integers(0, 5, 300)
            logits = rng.normal(size=(4, 300, 5))
            logits[:, np.arange(300), labels] += skill * np.arange(1, 5)[:, None]
            runs.append(ExitOutputs(logits, labels, np.array([3.0, 5.0, 8.0, 10.0]), 10.0,
                                    tags={"row": "R", "regime": regime, "method": "sdn", "seed": seed}))
    return runs


RUNS = _runs()
SCORING = Scoring(budgets=(0.5, 0.75, 1.0), grid="dense")


def test_a_rule_is_a_scoring_or_patience_by_retagging() -> None:
    scored, scoring = under_rule(RUNS, SCORING, "margin")
    assert scored == RUNS and scoring == Scoring(budgets=(0.5, 0.75, 1.0), grid="dense", rule="margin")
    patient, same = under_rule(RUNS, SCORING, "patience")
    assert same == SCORING and {out.tags["method"] for out in patient} == {"pbee"} and RUNS[0].tags["method"] == "sdn"
    with pytest.raises(ValueError, match="rule must be one of"):
        under_rule(RUNS, SCORING, "variance")
    with pytest.raises(ValueError, match="PBEE and ZTW runs have their own rules"):
        under_rule(patient, SCORING, "maxprob")


def test_rule_tables_stack_each_rules_budget_table() -> None:
    table, points = rule_tables(RUNS, SCORING)
    assert list(pd.unique(table["rule"])) == list(EXIT_RULES) and list(points) == list(EXIT_RULES)
    assert list(table.columns[:3]) == ["row", "rule", "regime"]
    assert len(table) == len(EXIT_RULES) * 3 * 3  # rules x regimes x budgets
    paper = table[table["rule"] == "maxprob"].drop(columns="rule").reset_index(drop=True)
    assert paper.equals(budget_table(RUNS, SCORING, by=("row", "regime")))
    assert set(table.loc[table["rule"] == "patience", "evaluation"]) == {"patience"}
    assert points["entropy"].equals(run_points(RUNS, Scoring(budgets=(0.5, 0.75, 1.0), grid="dense", rule="entropy")))


def test_the_table1_claims_are_decided_under_every_rule_at_table1s_family_level() -> None:
    """Under the maximum softmax the rule page's claims are Table 1's own: the same intervals and
    verdicts (one claim, one verdict), the other rules' at the same level."""
    _, points = rule_tables(RUNS, SCORING)
    evidence = pd.DataFrame([{"row": "R", "regime": r, "seed": s, "evidence": True, "early_stopped": True, "why": ""}
                             for r in ("disjoint", "joint", "mixed") for s in range(3)])
    status = claims.rule_claims(points, evidence)
    assert len(status) == 4 * len(EXIT_RULES) and set(status["family"]) == {"Table 1 (4 claims a row)"}
    assert status["scale"].str.endswith("; rule: patience").sum() == 4
    alone = claims.table1_claims(points["maxprob"], evidence)
    maxprob = status[status["rule"] == "maxprob"]
    assert maxprob["effect"].tolist() == pytest.approx(alone["effect"].tolist())
    assert maxprob["ci_low"].tolist() == pytest.approx(alone["ci_low"].tolist(), nan_ok=True)
    assert maxprob["verdict"].tolist() == alone["verdict"].tolist()
    view = claims.verdicts_by_rule(status)
    assert list(view.columns) == list(EXIT_RULES) and len(view) == 4
    assert view.loc[(claims.MIXED_BEST.statement, view.index[2][1]), "maxprob"] == status.iloc[2]["verdict"]
