"""One seaborn style for the whole book, the FLOPs-accuracy figure and the budget table's format."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

COST_LABEL = "Expected cost (% of backbone-only MACs)"
ACCURACY_LABEL = "Test accuracy (%)"
POINT_COLUMNS: tuple[str, ...] = ("threshold", "patience")


def set_style() -> None:
    """The book's seaborn theme; every plotting helper applies it."""
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        palette="colorblind",
        rc={"figure.figsize": (6.0, 4.0), "axes.spines.top": False, "axes.spines.right": False},
    )


def flops_accuracy(
    curves: pd.DataFrame,
    *,
    hue: str = "regime",
    singles: pd.DataFrame | None = None,
    backbone: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Accuracy against expected cost: one line per ``hue`` value over its operating points.

    ``curves``: frames of :func:`mexit.evaluate.sweep` or :func:`mexit.evaluate.patience_sweep`
    concatenated with a ``hue`` column; rows sharing a ``hue`` value and operating point (seeds)
    are averaged. ``singles``: :func:`mexit.evaluate.single_exits` frames with a ``hue`` column,
    drawn as dots of the line's colour. ``backbone``: (cost %, accuracy %) of the backbone-only
    model, drawn as a black star.
    """
    point = next((c for c in POINT_COLUMNS if c in curves.columns), None)
    missing = [c for c in (hue, "cost_pct", "accuracy") if c not in curves.columns]
    if point is None or missing:
        raise ValueError(
            f"curves must have columns {hue!r} (hue), 'cost_pct', 'accuracy' and one of {POINT_COLUMNS}, "
            f"got {list(curves.columns)}"
        )
    if singles is not None and not {hue, "cost_pct", "accuracy"} <= set(singles.columns):
        raise ValueError(f"singles must have columns {hue!r} (hue), 'cost_pct' and 'accuracy'")
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    levels = list(pd.unique(curves[hue]))
    colours = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    for level in levels:
        mean = curves[curves[hue] == level].groupby(point)[["cost_pct", "accuracy"]].mean().sort_index()
        ax.plot(mean["cost_pct"], mean["accuracy"], color=colours[level], label=str(level))
    if singles is not None:
        for level, frame in singles.groupby(hue, sort=False):
            ax.scatter(frame["cost_pct"], frame["accuracy"], color=colours.get(level, "grey"), s=18, zorder=3)
        ax.scatter([], [], color="grey", s=18, label="single exits")
    if backbone is not None:
        ax.scatter(*backbone, marker="*", s=160, color="black", zorder=4, label="backbone only")
    ax.set_xlabel(COST_LABEL)
    ax.set_ylabel(ACCURACY_LABEL)
    ax.legend(title=hue)
    return ax


def format_budget_table(df: pd.DataFrame, *, digits: int = 1) -> pd.DataFrame:
    """The book's view of :func:`mexit.evaluate.budget_table`: one row per group, one column per
    budget ("25%" ..) plus "final exit", cells "mean ± std" ("mean" with one run, "–" where no
    operating point fits)."""
    if not {"budget", "accuracy_mean", "accuracy_std", "final_accuracy_mean"} <= set(df.columns):
        raise ValueError("df must be a table from mexit.evaluate.budget_table")
    by = list(df.columns[: df.columns.get_loc("budget")])  # the group columns come first

    def cell(mean: float, std: float) -> str:
        if np.isnan(mean):
            return "–"
        return f"{mean:.{digits}f}" if np.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    records = []
    for key, group in df.groupby(by, sort=False) if by else [((), df)]:
        record = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for row in group.itertuples(index=False):
            record[f"{100 * row.budget:g}%"] = cell(row.accuracy_mean, row.accuracy_std)
        record["final exit"] = cell(group["final_accuracy_mean"].iloc[0], group["final_accuracy_std"].iloc[0])
        records.append(record)
    table = pd.DataFrame(records)
    return table.set_index(by) if by else table
