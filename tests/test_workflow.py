"""The README's few lines: three stored runs -> a FLOPs-accuracy curve and a budget table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from mexit.pipeline import train_or_load
from mexit.config import load_config, regime_configs  # noqa: E402
from mexit.evaluate import Scoring, budget_table, sweep  # noqa: E402
from mexit.plots import flops_accuracy, format_budget_table  # noqa: E402
from mexit.store import RunStore  # noqa: E402


def test_curve_and_table_from_three_stored_runs(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    runs = [train_or_load(store, c).outputs() for c in regime_configs(load_config("tiny"), ["disjoint", "joint", "mixed"], [0])]
    curves = pd.concat(sweep(r.test_logits, r.test_labels, r.costs, r.backbone_cost).assign(**r.tags) for r in runs)
    ax = flops_accuracy(curves, hue="regime")
    assert len(ax.get_lines()) >= 3
    table = budget_table(runs, Scoring(grid="dense"), by=("regime",))
    assert set(table["regime"]) == {"disjoint", "joint", "mixed"}
    assert set(table["budget"]) == {0.25, 0.5, 0.75, 1.0}
    final = {r.tags["regime"]: r.test_labels.__eq__(r.test_logits[-1].argmax(-1)).mean() * 100 for r in runs}
    for regime, accuracy in final.items():
        assert table.loc[table["regime"] == regime, "final_accuracy_mean"].iloc[0] == accuracy
    formatted = format_budget_table(table)
    assert list(formatted.columns)[-1] == "final exit" and len(formatted) == 3
