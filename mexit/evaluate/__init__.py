"""Early-exit evaluation from stored per-exit logits: sweeps, ZTW ensembling and budget tables.

Costs are MACs (one multiply-add = 1, fvcore's "flop"); ``cost_pct`` is % of the backbone-only
model's MACs; accuracies are %. A curve and a table from three stored runs (``runs``: a list of
:class:`ExitOutputs` from the run store, one per regime)::

    from mexit.evaluate import Scoring, budget_table, sweep
    from mexit.plots import flops_accuracy, format_budget_table
    curves = pd.concat(sweep(r.test_logits, r.test_labels, r.costs, r.backbone_cost).assign(**r.tags) for r in runs)
    flops_accuracy(curves, hue="regime")
    format_budget_table(budget_table(runs, Scoring(grid="dense"), by=("regime",)))

``budget_table`` scores each run by its ``method`` tag (PBEE by patience, ZTW through its
ensemble). How, is one frozen :class:`Scoring`, checked when made, whose options name each
evaluation choice, the authors' or ours: ``pick`` (the paper's ``"last"`` affordable operating
point or our most accurate ``"best"`` one, picked on validation), ``aggregate`` (our point per
run, ``"runs"``, or the authors' mean curve over seeds, ``"curves"``) and ``ztw_final`` (our
ensembled final exit, ``"ensembled"``, or the authors' ``"plain"`` one).
The ZTW ensemble on its own is fitted on a split named explicitly::

    from mexit.evaluate import exit_accuracy, ztw_ensemble
    r = runs[0]
    ensembled = ztw_ensemble(r.test_logits, fit_logits=r.val_logits, fit_labels=r.val_labels)
    exit_accuracy(ensembled, r.test_labels)  # accuracy (%) of every ensembled exit
"""

from mexit.evaluate.sweeps import (
    confidences,
    exit_accuracy,
    largest_cost_gap,
    patience_sweep,
    single_exits,
    sweep,
    threshold_grid,
)
from mexit.evaluate.calibration import (
    budget_calibration,
    expected_calibration_error,
    exit_calibration,
    failure_auroc,
    ks_calibration_error,
    pooled_reliability,
    reliability,
)
from mexit.evaluate.cost import cost_ratio, regime_cost, shared_cost, training_macs_per_sample
from mexit.evaluate.evidence import at_stated_budget, evidence_view, phase_view
from mexit.evaluate.stats import mean_ci, paired_differences
from mexit.evaluate.scoring import Scoring
from mexit.evaluate.tables import ExitOutputs, budget_table, rule_comparison, run_curve, run_points
from mexit.evaluate.ztw import ztw_ensemble

__all__ = [
    "ExitOutputs",
    "at_stated_budget",
    "budget_table",
    "cost_ratio",
    "confidences",
    "evidence_view",
    "exit_accuracy",
    "largest_cost_gap",
    "mean_ci",
    "paired_differences",
    "patience_sweep",
    "phase_view",
    "regime_cost",
    "training_macs_per_sample",
    "rule_comparison",
    "shared_cost",
    "run_curve",
    "run_points",
    "single_exits",
    "sweep",
    "threshold_grid",
    "ztw_ensemble",
]
