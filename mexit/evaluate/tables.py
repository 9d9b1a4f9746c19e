"""Stored per-exit outputs of a run and the budget table over seeds (the paper's Table 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mexit.evaluate.scoring import Scoring
from mexit.evaluate.stats import mean_ci
from mexit.evaluate.sweeps import check_exit_arrays, check_labels, exit_accuracy, patience_sweep, sweep, to_numpy
from mexit.evaluate.ztw import ztw_ensemble

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
    outputs: Sequence[ExitOutputs], scoring: Scoring = Scoring(), *, by: Sequence[str] = ("regime", "method")
) -> pd.DataFrame:
    """Accuracy at fractions of the backbone-only cost (``scoring.budgets``), summarised over the
    runs of each group; ``scoring`` (a :class:`~mexit.evaluate.Scoring`) says how.

    Each run's operating points (its curve) come from the early-exit rule of its
    ``tags["method"]`` (``"sdn"`` when absent):

    - ``"pbee"``: :func:`~mexit.evaluate.patience_sweep`, patience 0..E-1 as operating points;
    - ``"ztw"``: :func:`~mexit.evaluate.sweep` over the ZTW ensemble of its outputs
      (:func:`~mexit.evaluate.ztw_ensemble` with ``final=scoring.ztw_final``, fitted on its
      ``val_logits``/``val_labels``, which such a run must have);
    - any other method (``"sdn"``, ``"gpf"``, ...): :func:`~mexit.evaluate.sweep` on its outputs.

    ``scoring.grid`` and ``scoring.rule`` are the threshold sweep's. Points are picked by their
    expected cost and accuracy on the fitting split, ``scoring.fit``: the test split (``"test"``, as the paper) or the
    validation split (``"val"``); the test accuracy and test cost at the picked point are reported.
    At budget b, a point fits if its expected cost is at most b x ``backbone_cost``, and
    ``scoring.pick`` chooses among the points that fit:

    - ``"last"`` (the paper's rule): the last one in the curve's order (thresholds or patiences
      increasing, along which the expected cost never falls), i.e. the most expensive affordable
      point. It is not always the most accurate affordable one (accuracy need not grow with cost),
      so accuracy can fall as the budget grows;
    - ``"best"`` (ours): the most accurate one, the earlier (cheaper) one on a tie. Picking the
      most accurate point on the split reported on would be selection on test, so it needs
      ``fit="val"``.

    Runs are grouped by their ``tags`` values for the keys in ``by``; the other runs of a group
    (seeds) are the replicates, combined as ``scoring.aggregate`` says:

    - ``"runs"`` (ours): each run picks its own point on its own curves; the summary is over the
      runs' test accuracies at their points;
    - ``"curves"`` (the authors'): the runs' curves, which must have the same operating points
      (the same grid, or for patience the same number of exits) and the same ``backbone_cost``,
      are averaged point by point (mean cost and mean accuracy over runs at each operating point);
      one point is picked on the mean curve of the fitting split, and the summary is over the
      runs' test accuracies at that point.

    One row per (group, budget), groups in order of first appearance: the ``by`` columns,
    ``budget`` (fraction), ``accuracy_mean``, ``accuracy_std`` (ddof 1), ``accuracy_ci95``
    (half-width of the 95% t-interval over runs; NaN with one run), ``n`` (runs), ``cost_pct_mean``
    (mean test cost at the picked points, % of backbone), ``final_accuracy_mean``/``_std``/``_ci95``
    (the plain final exit on its own, never ensembled, whose cost exceeds 100% of the backbone),
    ``fit``, ``pick``, ``aggregate``, ``evaluation`` (``"threshold"``, ``"patience"`` or
    ``"ztw-ensemble"``; comma-joined if a group mixes them) and ``note``. Where no operating point
    fits a budget in some run of a group (or, with ``"curves"``, on the mean curve), the group's
    accuracy at that budget is NaN and ``note`` says so.
    """
    by = list(by)
    _check_outputs(outputs, scoring, by)
    budgets = np.asarray(scoring.budgets)

    rows = []
    for key, runs in group_runs(outputs, by).items():
        accuracy, cost, _ = _picked_points(runs, scoring)
        final = _summary(np.array([_final_accuracy(out) for out in runs]))
        evaluation = ", ".join(dict.fromkeys(_evaluation(out) for out in runs))
        for b, budget in enumerate(budgets):
            unfit = int(np.isnan(accuracy[:, b]).sum())
            rows.append(
                {
                    **dict(zip(by, key)),
                    "budget": budget,
                    **{f"accuracy_{k}": v for k, v in _summary(accuracy[:, b]).items()},
                    "n": len(runs),
                    "cost_pct_mean": cost[:, b].mean(),
                    **{f"final_accuracy_{k}": v for k, v in final.items()},
                    "fit": scoring.fit,
                    "pick": scoring.pick,
                    "aggregate": scoring.aggregate,
                    "evaluation": evaluation,
                    "note": _note(unfit, len(runs), scoring.aggregate),
                }
            )
    return pd.DataFrame(rows)


def run_points(outputs: Sequence[ExitOutputs], scoring: Scoring = Scoring()) -> pd.DataFrame:
    """Each run's own operating point at each budget, before any summary over seeds.

    The points are picked as in :func:`budget_table`, each run on its own curves (whatever
    ``scoring.aggregate`` says: these are the points a summary is over). One row per (run,
    budget): the run's tags, ``budget``, ``accuracy`` and ``cost_pct`` (NaN where no operating
    point fits), ``operating_point`` (the picked threshold, or patience under ``"patience"``
    evaluation; NaN where none fits), ``final_accuracy`` (the plain final exit), ``pick`` and
    ``evaluation``. Pair these
    rows across regimes with :func:`mexit.evaluate.paired_differences`.
    """
    _check_outputs(outputs, scoring, ())
    accuracy, cost, operating = _picked_points(outputs, replace(scoring, aggregate="runs"))
    rows = []
    for r, out in enumerate(outputs):
        for b, budget in enumerate(scoring.budgets):
            rows.append(
                {
                    **out.tags,
                    "budget": float(budget),
                    "accuracy": accuracy[r, b],
                    "cost_pct": cost[r, b],
                    "operating_point": operating[r, b],
                    "final_accuracy": _final_accuracy(out),
                    "pick": scoring.pick,
                    "evaluation": _evaluation(out),
                    "rule": scoring.rule if _evaluation(out) == "threshold" else None,
                }
            )
    return pd.DataFrame(rows)


def group_runs(outputs: Sequence[ExitOutputs], by: Sequence[str]) -> dict[tuple, list[ExitOutputs]]:
    """The runs grouped by their ``tags`` values for the keys in ``by``, groups in order of first appearance."""
    groups: dict[tuple, list[ExitOutputs]] = {}
    for out in outputs:
        groups.setdefault(tuple(out.tags[k] for k in by), []).append(out)
    return groups


def _check_outputs(outputs: Sequence[ExitOutputs], scoring: Scoring, by: Sequence[str]) -> None:
    """Raise a ValueError unless every run can be scored as ``scoring`` says and grouped ``by``."""
    if len(outputs) == 0:
        raise ValueError("outputs must hold at least one ExitOutputs")
    for out in outputs:
        missing = [key for key in by if key not in out.tags]
        if missing:
            raise ValueError(f"by names tags {missing} that a run lacks; its tags are {out.tags}")
        if scoring.fit == "val" and out.val_logits is None:
            raise ValueError("fit='val' needs val_logits and val_labels on every run")
        if _evaluation(out) == "ztw-ensemble" and out.val_logits is None:
            raise ValueError(f"method='ztw' runs need val_logits and val_labels to fit the ZTW ensemble: {out.tags}")


def _evaluation(out: ExitOutputs) -> str:
    """How a run is scored: ``"threshold"``, ``"patience"`` or ``"ztw-ensemble"`` (see :func:`budget_table`)."""
    return EVALUATIONS.get(out.tags.get("method", "sdn"), "threshold")


def _final_accuracy(out: ExitOutputs) -> float:
    """Test accuracy (%) of the run's plain final exit."""
    return float(exit_accuracy(out.test_logits, out.test_labels)[-1])


def run_curve(out: ExitOutputs, scoring: Scoring = Scoring()) -> pd.DataFrame:
    """A run's operating points on the test split, scored as :func:`budget_table` scores it (by its
    ``method`` tag: patience for PBEE, the fitted ensemble with ``scoring.ztw_final`` for ZTW, else
    the threshold ``scoring.rule`` on ``scoring.grid``), in the order along which the expected cost
    never falls; with its ``evaluation``."""
    return _curves(out, scoring)[0].assign(evaluation=_evaluation(out))


def _curves(out: ExitOutputs, scoring: Scoring) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's operating points on test, and on the split that picks them (``scoring.fit``)."""
    evaluation = _evaluation(out)
    test_logits, val_logits = out.test_logits, out.val_logits
    if evaluation == "ztw-ensemble":  # one fit on validation, applied to both splits
        n_val = out.val_logits.shape[1]
        both = ztw_ensemble(
            np.concatenate([out.val_logits, out.test_logits], axis=1),
            fit_logits=out.val_logits,
            fit_labels=out.val_labels,
            final=scoring.ztw_final,
        )
        val_logits, test_logits = both[:, :n_val], both[:, n_val:]

    def points(logits: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        if evaluation == "patience":
            return patience_sweep(logits, labels, out.costs, out.backbone_cost)
        return sweep(logits, labels, out.costs, out.backbone_cost, grid=scoring.grid, rule=scoring.rule)

    test = points(test_logits, out.test_labels)
    return test, points(val_logits, out.val_labels) if scoring.fit == "val" else test


def _picked_points(runs: Sequence[ExitOutputs], scoring: Scoring) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test accuracy, test cost (%) and the operating point (threshold or patience), each [runs,
    budgets], at the operating point picked for each run and budget (NaN where none fits): each run's own point on its own curves
    (``aggregate="runs"``), or one point for all runs, picked on their mean curve (``"curves"``)."""
    budgets = np.asarray(scoring.budgets)
    curves = [_curves(out, scoring) for out in runs]
    if scoring.aggregate == "runs":
        picked = [_pick(picking, budgets * out.backbone_cost, scoring.pick) for out, (_, picking) in zip(runs, curves)]
    else:
        mean = _mean_curve(runs, [picking for _, picking in curves])
        picked = [_pick(mean, budgets * runs[0].backbone_cost, scoring.pick)] * len(runs)
    accuracy = np.array([_at(test["accuracy"], p) for (test, _), p in zip(curves, picked)])
    cost = np.array([_at(test["cost_pct"], p) for (test, _), p in zip(curves, picked)])
    operating = np.array([_at(test.iloc[:, 0], p) for (test, _), p in zip(curves, picked)])  # threshold or patience
    return accuracy, cost, operating


def _pick(points: pd.DataFrame, limits: np.ndarray, pick: str) -> np.ndarray:
    """Row index of the point picked by ``pick`` among the rows of ``points`` whose ``cost_macs`` is
    at most each limit: the last such row (``"last"``) or the first with the highest ``accuracy``
    among them (``"best"``); -1 where no row fits."""
    cost, accuracy = points["cost_macs"].to_numpy(), points["accuracy"].to_numpy()
    picked = np.full(len(limits), -1)
    for b, limit in enumerate(limits):
        fitting = np.flatnonzero(cost <= limit)
        if fitting.size:
            picked[b] = fitting[-1] if pick == "last" else fitting[np.argmax(accuracy[fitting])]
    return picked


def _mean_curve(runs: Sequence[ExitOutputs], curves: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The runs' curves averaged point by point: ``cost_macs`` and ``accuracy``, the mean over runs
    at each operating point. The curves must have the same operating points (the first column:
    thresholds or patiences) and the runs the same ``backbone_cost``."""
    operating_points = [(curve.columns[0], curve.iloc[:, 0].tolist()) for curve in curves]
    if any(points != operating_points[0] for points in operating_points):
        shapes = [f"{len(values)} {name}s" for name, values in operating_points]
        raise ValueError(
            "aggregate='curves' averages a group's curves point by point, so its runs need the same operating "
            f"points (the same grid, or for patience the same number of exits); runs {[out.tags for out in runs]} "
            f"have curves of {shapes}"
        )
    backbone_costs = [out.backbone_cost for out in runs]
    if len(set(backbone_costs)) > 1:
        raise ValueError(f"aggregate='curves' needs the runs of a group to share backbone_cost, got {backbone_costs}")
    columns = ("cost_macs", "accuracy")
    return pd.DataFrame({column: np.mean([curve[column] for curve in curves], axis=0) for column in columns})


def _at(values: pd.Series, picked: np.ndarray) -> np.ndarray:
    """``values`` at each picked row index, NaN where the index is -1 (nothing picked)."""
    return np.where(picked >= 0, values.to_numpy()[picked], np.nan)


def _note(unfit: int, n_runs: int, aggregate: str) -> str:
    """The ``note`` of a budget table row where ``unfit`` of its ``n_runs`` runs have no point."""
    if not unfit:
        return ""
    if aggregate == "curves":
        return "no operating point of the mean curve fits"
    return f"no operating point fits in {unfit} of {n_runs} runs"


def _summary(values: np.ndarray) -> dict[str, float]:
    """Mean, std (ddof 1) and 95% t-interval half-width over runs; NaN if any run is NaN."""
    summary = mean_ci(values)
    return {k: summary[k] for k in ("mean", "std", "ci95")}


READINGS: dict[str, dict[str, str]] = {
    "last, per run (the paper's point; ours to aggregate)": {"pick": "last", "aggregate": "runs", "fit": "test"},
    "last, on seed-averaged curves (the authors')": {"pick": "last", "aggregate": "curves", "fit": "test"},
    "best on validation, per run (ours)": {"pick": "best", "aggregate": "runs", "fit": "val"},
}
"""The readings of a budget table the book shows side by side: the ``pick``, ``aggregate`` and
``fit`` of the :class:`~mexit.evaluate.Scoring` for each."""


def rule_comparison(
    outputs: Sequence[ExitOutputs], scoring: Scoring = Scoring(), *, by: Sequence[str] = ("regime", "method")
) -> pd.DataFrame:
    """:func:`budget_table` under each of :data:`READINGS` (``scoring`` with that reading's
    ``pick``, ``aggregate`` and ``fit``), stacked, with a ``reading`` column after
    the ``by`` columns (:func:`mexit.plots.format_budget_table` then shows a row per reading), group
    by group. A group with a run that held out no validation split has no validation reading, and
    its rows' ``note`` says so."""
    def key(out: ExitOutputs) -> tuple:
        return tuple(out.tags[k] for k in by)

    without_validation = {key(out) for out in outputs if out.val_logits is None}
    frames = []
    for label, options in READINGS.items():
        scored = [out for out in outputs if options["fit"] != "val" or key(out) not in without_validation]
        if not scored:
            continue
        table = budget_table(scored, replace(scoring, **options), by=by)
        table.insert(len(by), "reading", label)  # a group column, so format_budget_table shows a row per reading
        frames.append(table)
    frame = pd.concat(frames, ignore_index=True)
    groups = [tuple(row) for row in frame[list(by)].itertuples(index=False)]
    first_seen = {group: index for index, group in reversed(list(enumerate(groups)))}
    frame = frame.iloc[sorted(range(len(frame)), key=lambda i: first_seen[groups[i]])].reset_index(drop=True)  # group by group
    lacking = [tuple(row) in without_validation for row in frame[list(by)].itertuples(index=False)]
    frame.loc[lacking, "note"] = [f"{note}; " * bool(note) + "no validation split: no reading on it" for note in frame.loc[lacking, "note"]]
    return frame
