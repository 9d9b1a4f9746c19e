"""Stored per-exit outputs of a run and the budget table over seeds (the paper's Table 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mexit.evaluate.stats import mean_ci
from mexit.evaluate.sweeps import check_exit_arrays, check_labels, exit_accuracy, patience_sweep, sweep, to_numpy
from mexit.evaluate.ztw import ztw_ensemble

FITS: tuple[str, ...] = ("test", "val")
# how runs are scored, by their "method" tag; every other method uses the confidence threshold
EVALUATIONS: dict[str, str] = {"pbee": "patience", "ztw": "ztw-ensemble"}


@dataclass
class ExitOutputs:
    """Every exit's logits of one trained run, with the costs of leaving at each exit.

    ``test_logits`` [E, N, C] (last = final exit), ``test_labels`` [N], ``costs`` [E] cumulative
    MACs of leaving at each exit (ICs included), ``backbone_cost`` MACs of the backbone-only model,
    optional ``val_logits`` [E, M, C] / ``val_labels`` [M], and ``tags`` naming the run
    (e.g. ``{"regime": "mixed", "method": "sdn", "seed": 0}``; ``method`` chooses how
    :func:`budget_table` scores the run). Arrays are stored as numpy.
    """

    test_logits: np.ndarray
    test_labels: np.ndarray
    costs: np.ndarray
    backbone_cost: float
    val_logits: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    tags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.test_logits, self.test_labels, self.costs, self.backbone_cost = check_exit_arrays(
            self.test_logits, self.test_labels, self.costs, self.backbone_cost, name="test_logits"
        )
        if (self.val_logits is None) != (self.val_labels is None):
            raise ValueError("val_logits and val_labels must be given together, or neither")
        if self.val_logits is not None:
            self.val_logits = to_numpy(self.val_logits)
            n_exits, _, n_classes = self.test_logits.shape
            if self.val_logits.ndim != 3 or self.val_logits.shape[::2] != (n_exits, n_classes):
                raise ValueError(
                    f"val_logits must have shape [E={n_exits}, M, C={n_classes}], got {self.val_logits.shape}"
                )
            n_val = self.val_logits.shape[1]
            self.val_labels = check_labels(self.val_labels, n_val, n_classes, name="val_logits")


def budget_table(
    outputs: Sequence[ExitOutputs],
    *,
    budgets: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    by: Sequence[str] = ("regime", "method"),
    fit: str = "test",
    grid: str = "paper",
    rule: str = "maxprob",
) -> pd.DataFrame:
    """Accuracy at fractions of the backbone-only cost, summarised over the runs of each group.

    Each run is scored by the early-exit rule of its ``tags["method"]`` (``"sdn"`` when absent):

    - ``"pbee"``: :func:`~mexit.evaluate.patience_sweep`, patience 0..E-1 as operating points;
    - ``"ztw"``: :func:`~mexit.evaluate.sweep` over the ZTW ensemble of its outputs
      (:func:`~mexit.evaluate.ztw_ensemble` fitted on its ``val_logits``/``val_labels``, which such
      a run must have);
    - any other method (``"sdn"``, ``"gpf"``, ...): :func:`~mexit.evaluate.sweep` on its outputs.

    ``grid`` and ``rule`` are the threshold sweep's. For each run and budget b, the operating point
    is the last one (thresholds or patiences in increasing order, along which the expected cost never
    falls) whose expected cost is at most b x
    ``backbone_cost``, picked on the test split (``fit="test"``, as the paper) or on the validation
    split (``fit="val"``); the test accuracy and cost there are reported. This is the paper's rule:
    the most expensive affordable point, which is not always the most accurate affordable one
    (accuracy need not grow with cost), so a run's accuracy can fall as the budget grows. Runs are grouped by their
    ``tags`` values for the keys in ``by``; the other runs of a group (seeds) are the replicates.

    One row per (group, budget), groups in order of first appearance: the ``by`` columns,
    ``budget`` (fraction), ``accuracy_mean``, ``accuracy_std`` (ddof 1), ``accuracy_ci95``
    (half-width of the 95% t-interval over runs; NaN with one run), ``n`` (runs), ``cost_pct_mean``
    (test cost, % of backbone), ``final_accuracy_mean``/``_std``/``_ci95`` (the plain final exit on
    its own, never ensembled, whose cost exceeds 100% of the backbone), ``fit``, ``evaluation``
    (``"threshold"``, ``"patience"`` or ``"ztw-ensemble"``; comma-joined if a group mixes them)
    and ``note``. Where no operating point fits a budget in some run of a group, the group's
    accuracy at that budget is NaN and ``note`` says so.
    """
    by = list(by)
    budgets = _check_budget_args(outputs, budgets, fit, by)

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for out in outputs:
        key = tuple(out.tags[k] for k in by)
        groups.setdefault(key, []).append(_run_points(out, budgets, fit, grid, rule))

    rows = []
    for key, runs in groups.items():
        final = _summary(np.array([run["final"] for run in runs]))
        evaluation = ", ".join(dict.fromkeys(run["evaluation"] for run in runs))
        for b, budget in enumerate(budgets):
            accuracy = np.array([run["accuracy"][b] for run in runs])
            cost = np.array([run["cost_pct"][b] for run in runs])
            unfit = int(np.isnan(accuracy).sum())
            rows.append(
                {
                    **dict(zip(by, key)),
                    "budget": budget,
                    **{f"accuracy_{k}": v for k, v in _summary(accuracy).items()},
                    "n": len(runs),
                    "cost_pct_mean": cost.mean(),
                    **{f"final_accuracy_{k}": v for k, v in final.items()},
                    "fit": fit,
                    "evaluation": evaluation,
                    "note": f"no operating point fits in {unfit} of {len(runs)} runs" if unfit else "",
                }
            )
    return pd.DataFrame(rows)


def run_points(
    outputs: Sequence[ExitOutputs],
    *,
    budgets: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    fit: str = "test",
    grid: str = "paper",
    rule: str = "maxprob",
) -> pd.DataFrame:
    """Each run's own operating point at each budget, before any summary over seeds.

    The points are picked as in :func:`budget_table`. One row per (run, budget): the run's tags,
    ``budget``, ``accuracy`` and ``cost_pct`` (NaN where no operating point fits),
    ``final_accuracy`` (the plain final exit) and ``evaluation``. Pair these rows across regimes with
    :func:`mexit.evaluate.paired_differences`.
    """
    budgets = _check_budget_args(outputs, budgets, fit, by=())
    rows = []
    for out in outputs:
        points = _run_points(out, budgets, fit, grid, rule)
        for b, budget in enumerate(budgets):
            rows.append(
                {
                    **out.tags,
                    "budget": float(budget),
                    "accuracy": points["accuracy"][b],
                    "cost_pct": points["cost_pct"][b],
                    "final_accuracy": points["final"],
                    "evaluation": points["evaluation"],
                }
            )
    return pd.DataFrame(rows)


def _check_budget_args(outputs: Sequence[ExitOutputs], budgets: Sequence[float], fit: str, by: Sequence[str]) -> np.ndarray:
    if len(outputs) == 0:
        raise ValueError("outputs must hold at least one ExitOutputs")
    budgets = np.asarray(budgets, dtype=np.float64)
    if budgets.ndim != 1 or budgets.size == 0 or not np.all((budgets > 0) & (budgets <= 1)):  # nan fails too
        raise ValueError(f"budgets must be fractions of the backbone cost in (0, 1], got {budgets.tolist()}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    for out in outputs:
        missing = [key for key in by if key not in out.tags]
        if missing:
            raise ValueError(f"by names tags {missing} that a run lacks; its tags are {out.tags}")
        if fit == "val" and out.val_logits is None:
            raise ValueError("fit='val' needs val_logits and val_labels on every run")
        if _evaluation(out) == "ztw-ensemble" and out.val_logits is None:
            raise ValueError(f"method='ztw' runs need val_logits and val_labels to fit the ZTW ensemble: {out.tags}")
    return budgets


def _evaluation(out: ExitOutputs) -> str:
    """How a run is scored: ``"threshold"``, ``"patience"`` or ``"ztw-ensemble"`` (see :func:`budget_table`)."""
    return EVALUATIONS.get(out.tags.get("method", "sdn"), "threshold")


def run_curve(out: ExitOutputs, *, grid: str = "paper", rule: str = "maxprob") -> pd.DataFrame:
    """A run's operating points on the test split, scored as :func:`budget_table` scores it (by its
    ``method`` tag: patience for PBEE, the fitted ensemble for ZTW, else the threshold ``rule`` on
    ``grid``), in the order along which the expected cost never falls; with its ``evaluation``."""
    return _curves(out, grid, rule, fit="test")[0].assign(evaluation=_evaluation(out))


def _curves(out: ExitOutputs, grid: str, rule: str, fit: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's operating points on test, and on the split that picks them (``fit``)."""
    evaluation = _evaluation(out)
    test_logits, val_logits = out.test_logits, out.val_logits
    if evaluation == "ztw-ensemble":  # one fit on validation, applied to both splits
        n_val = out.val_logits.shape[1]
        both = ztw_ensemble(
            np.concatenate([out.val_logits, out.test_logits], axis=1),
            fit_logits=out.val_logits,
            fit_labels=out.val_labels,
        )
        val_logits, test_logits = both[:, :n_val], both[:, n_val:]

    def points(logits: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        if evaluation == "patience":
            return patience_sweep(logits, labels, out.costs, out.backbone_cost)
        return sweep(logits, labels, out.costs, out.backbone_cost, grid=grid, rule=rule)

    test = points(test_logits, out.test_labels)
    return test, points(val_logits, out.val_labels) if fit == "val" else test


def _run_points(out: ExitOutputs, budgets: np.ndarray, fit: str, grid: str, rule: str) -> dict[str, Any]:
    """One run's test accuracy and cost (%) at each budget's picked operating point, its plain final
    exit's accuracy and its evaluation."""
    evaluation = _evaluation(out)
    test, picking = _curves(out, grid, rule, fit)
    accuracy = np.full(len(budgets), np.nan)
    cost_pct = np.full(len(budgets), np.nan)
    fits = picking["cost_macs"].to_numpy()[None, :] <= budgets[:, None] * out.backbone_cost
    for b, row_fits in enumerate(fits):
        if row_fits.any():
            last = np.flatnonzero(row_fits)[-1]
            accuracy[b] = test["accuracy"].iloc[last]
            cost_pct[b] = test["cost_pct"].iloc[last]
    final = exit_accuracy(out.test_logits, out.test_labels)[-1]
    return {"accuracy": accuracy, "cost_pct": cost_pct, "final": final, "evaluation": evaluation}


def _summary(values: np.ndarray) -> dict[str, float]:
    """Mean, std (ddof 1) and 95% t-interval half-width over runs; NaN if any run is NaN."""
    summary = mean_ci(values)
    return {k: summary[k] for k in ("mean", "std", "ci95")}
