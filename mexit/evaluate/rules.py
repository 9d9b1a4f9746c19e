"""The same runs read under other early-exit rules: which exit a sample leaves at, decided by the
maximum softmax (the paper's), the normalised entropy, the top-2 margin, or patience (PBEE's rule:
leave once that many consecutive exits agree), each as a :class:`~mexit.evaluate.Scoring` reads it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pandas as pd

from mexit.evaluate.scoring import Scoring
from mexit.evaluate.sweeps import RULES
from mexit.evaluate.tables import ExitOutputs, budget_table, run_points

EXIT_RULES: tuple[str, ...] = (*RULES, "patience")
"""The rules a page compares: the threshold rules of :func:`mexit.evaluate.sweep` and patience."""


def under_rule(outputs: Sequence[ExitOutputs], scoring: Scoring, rule: str) -> tuple[list[ExitOutputs], Scoring]:
    """``outputs`` and ``scoring`` as they read under ``rule``: a threshold rule replaces
    ``scoring.rule``; ``"patience"`` scores every run by :func:`mexit.evaluate.patience_sweep`
    (its ``method`` tag set to ``"pbee"``). Runs must be threshold-scored ones (not ZTW's ensemble)."""
    if rule not in EXIT_RULES:
        raise ValueError(f"rule must be one of {EXIT_RULES}, got {rule!r}")
    if any(out.tags.get("method", "sdn") in ("pbee", "ztw") for out in outputs):
        raise ValueError("under_rule reads runs scored by threshold; PBEE and ZTW runs have their own rules")
    if rule != "patience":
        return list(outputs), replace(scoring, rule=rule)
    retagged = [replace(out, tags={**out.tags, "method": "pbee"}) for out in outputs]
    return retagged, scoring


def rule_tables(
    outputs: Sequence[ExitOutputs], scoring: Scoring, rules: Sequence[str] = EXIT_RULES, by: Sequence[str] = ("row", "regime")
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The budget table under each rule, stacked rule by rule with a ``rule`` column after the first
    ``by`` column (so that a row's groups read rule by rule, each rule's regimes together), and each
    rule's :func:`mexit.evaluate.run_points`, by rule."""
    tables, points = [], {}
    for rule in rules:
        scored, rule_scoring = under_rule(outputs, scoring, rule)
        table = budget_table(scored, rule_scoring, by=by)
        table.insert(min(1, len(by)), "rule", rule)
        tables.append(table)
        points[rule] = run_points(scored, rule_scoring)
    return pd.concat(tables, ignore_index=True), points
