"""One seaborn style for the whole book, the FLOPs-accuracy figure and the budget table's format."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

from mexit.evaluate.stats import format_interval, mean_ci

COST_LABEL = "Expected cost (% of backbone-only MACs)"
ACCURACY_LABEL = "Test accuracy (%)"
POINT_COLUMNS: tuple[str, ...] = ("threshold", "patience")


REGIME_ORDER: tuple[str, ...] = ("disjoint", "joint", "mixed")


def level_colours(levels: list) -> dict:
    """A colour per level: a regime always gets its own (disjoint, joint, mixed: the palette's first
    three), so that a panel with mixed alone draws it in mixed's colour; other levels take the next."""
    palette = sns.color_palette("colorblind", n_colors=len(REGIME_ORDER) + len(levels))
    others = iter(palette[len(REGIME_ORDER):])
    return {level: palette[REGIME_ORDER.index(level)] if level in REGIME_ORDER else next(others) for level in levels}


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
    band: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Accuracy against expected cost: one line per ``hue`` value over its operating points.

    ``curves``: frames of :func:`mexit.evaluate.sweep` or :func:`mexit.evaluate.patience_sweep`
    concatenated with a ``hue`` column; rows sharing a ``hue`` value and operating point (seeds)
    are averaged. ``singles``: :func:`mexit.evaluate.single_exits` frames with a ``hue`` column,
    drawn as dots of the line's colour. ``backbone``: (cost %, accuracy %) of the backbone-only
    model, drawn as a black star. ``band``: a column naming the replicates (e.g. ``"seed"``); the
    band spans the lowest and highest replicate's accuracy at each operating point, drawn at the
    mean cost.
    """
    present = [c for c in POINT_COLUMNS if c in curves.columns]
    point = present[0] if present else None
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
    colours = level_colours(levels)
    if band is not None and band not in curves.columns:
        raise ValueError(f"band names a column {band!r} that curves lack")
    for level in levels:
        frame = curves[curves[hue] == level]
        # frames of several evaluations side by side (thresholds, patiences): this line's own points
        point = next((c for c in present if frame[c].notna().any()), present[0])
        mean = frame.groupby(point)[["cost_pct", "accuracy"]].mean().sort_index()
        ax.plot(mean["cost_pct"], mean["accuracy"], color=colours[level], label=str(level))
        if band is not None and frame[band].nunique() > 1:
            spread = frame.groupby(point)["accuracy"].agg(["min", "max"]).loc[mean.index]
            ax.fill_between(mean["cost_pct"], spread["min"], spread["max"], color=colours[level], alpha=0.2, linewidth=0)
    if singles is not None:
        for level, frame in singles.groupby(hue, sort=False):
            ax.scatter(frame["cost_pct"], frame["accuracy"], color=colours.get(level, "grey"), s=18, zorder=3)
        ax.scatter([], [], color="grey", s=18, label="single exits")
    if backbone is not None:
        ax.scatter(*backbone, marker="*", s=160, color="black", zorder=4, label="backbone only")
    ax.set_xlabel(COST_LABEL)
    ax.set_ylabel(ACCURACY_LABEL)
    ax.legend(title=hue, bbox_to_anchor=(1.01, 1.0), loc="upper left", fontsize="small")  # beside the curves, never over them
    return ax


def format_budget_table(df: pd.DataFrame, *, digits: int = 1, ci: bool = False) -> pd.DataFrame:
    """The book's view of :func:`mexit.evaluate.budget_table`: one row per group, one column per
    budget ("25%" ..) plus "final exit", cells "mean ± std" ("mean" with one run, "–" where no
    operating point fits); with ``ci``, cells are "mean [low, high]", the 95% CI of the mean. The
    columns' name says which ("accuracy %, mean ± std over seeds" or "... mean [95% CI] ...")."""
    if not {"budget", "accuracy_mean", "accuracy_std", "final_accuracy_mean"} <= set(df.columns):
        raise ValueError("df must be a table from mexit.evaluate.budget_table")
    by = list(df.columns[: df.columns.get_loc("budget")])  # the group columns come first

    def cell(mean: float, std: float, half_width: float) -> str:
        if np.isnan(mean):
            return "–"
        if np.isnan(std):
            return f"{mean:.{digits}f}"
        if ci:
            return format_interval(mean, mean - half_width, mean + half_width, digits)
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    records = []
    for key, group in df.groupby(by, sort=False) if by else [((), df)]:
        record = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for row in group.itertuples(index=False):
            record[f"{100 * row.budget:g}%"] = cell(row.accuracy_mean, row.accuracy_std, row.accuracy_ci95)
        first = group.iloc[0]
        record["final exit"] = cell(first["final_accuracy_mean"], first["final_accuracy_std"], first["final_accuracy_ci95"])
        records.append(record)
    table = pd.DataFrame(records)
    table = table.set_index(by) if by else table
    table.columns.name = "accuracy %, " + ("mean [95% CI]" if ci else "mean ± std") + " over seeds"  # what the cells hold
    return table


def format_differences(df: pd.DataFrame, *, digits: int = 1) -> pd.DataFrame:
    """The book's view of :func:`mexit.evaluate.paired_differences` over budgets: one row per
    (row, pair), one column per budget, cells "mean [low, high]" (points)."""
    needed = {"row", "pair", "budget", "mean", "low", "high"}
    if not needed <= set(df.columns):
        raise ValueError(f"df must have columns {sorted(needed)}, got {list(df.columns)}")

    def cell(r: pd.Series) -> str:
        return format_interval(r["mean"], r["low"], r["high"], digits, signed=True)

    view = df.assign(cell=df.apply(cell, axis=1), column=df["budget"].map(lambda b: f"{100 * b:g}%"))
    table = view.pivot_table(index=["row", "pair"], columns="column", values="cell", aggfunc="first", sort=False)
    table.columns.name = None
    return table


def exit_accuracies(exits: pd.DataFrame, *, hue: str = "regime", ax: Axes | None = None) -> Axes:
    """Each exit's own test accuracy against its cost (mean over seeds, min-max bars): the frame of
    :func:`mexit.study.exit_table` for one row."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    levels = list(pd.unique(exits[hue]))
    colours = level_colours(levels)
    for level in levels:
        stats = exits[exits[hue] == level].groupby("exit").agg(
            cost_pct=("cost_pct", "mean"), mean=("accuracy", "mean"), low=("accuracy", "min"), high=("accuracy", "max")
        )
        ax.errorbar(
            stats["cost_pct"], stats["mean"], yerr=[stats["mean"] - stats["low"], stats["high"] - stats["mean"]],
            color=colours[level], marker="o", markersize=4, capsize=2, label=str(level),
        )
    ax.set_xlabel("Cost of the exit (% of backbone-only MACs)")
    ax.set_ylabel(ACCURACY_LABEL)
    ax.legend(title=hue)
    return ax


def validation_curves(trace: pd.DataFrame, *, hue: str = "regime", ax: Axes | None = None) -> Axes:
    """The final exit's validation accuracy over optimiser steps of all phases, one line per
    ``hue`` value and seed: the frame of :meth:`mexit.study.Study.traces` for one row."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    recorded = [c for c in trace.columns if c.startswith("val_acc_") and trace[c].notna().any()]
    if not recorded:  # no evaluation during training (the authors' rule without early stopping)
        ax.set_title("no validation during training")
        return ax
    final = max(int(c.removeprefix("val_acc_")) for c in recorded)  # the row's own last exit
    levels = list(pd.unique(trace[hue]))
    colours = level_colours(levels)
    for (level, seed), frame in trace.groupby([hue, "seed"], sort=False):
        steps = frame.groupby("phase", sort=False)["step"].max().cumsum().shift(fill_value=0)
        global_step = frame["step"] + frame["phase"].map(steps)
        first = seed == trace["seed"].min()
        ax.plot(global_step, frame[f"val_acc_{final}"], color=colours[level], alpha=0.8, label=str(level) if first else None)
    ax.set_xlabel("Optimiser steps (all phases of the regime)")
    ax.set_ylabel("Validation accuracy, final exit (%)")
    ax.legend(title=hue)
    return ax


def variant_accuracy(
    table: pd.DataFrame, *, budget: float = 1.0, hue: str = "regime", by: str = "variant", ax: Axes | None = None
) -> Axes:
    """An ablation at one ``budget``: each variant's accuracy (mean over seeds, bars the 95% CI),
    one series of markers per ``hue`` value, variants (the values of ``by``: ``"variant"``, or for
    instance ``"rule"``) in the table's order. ``table``: a :func:`mexit.evaluate.budget_table`
    with ``by`` and ``hue`` among its groups, for one row."""
    needed = {by, hue, "budget", "accuracy_mean", "accuracy_ci95"}
    if not needed <= set(table.columns):
        raise ValueError(f"table must have columns {sorted(needed)} (a budget_table by {by!r} and {hue!r}), got {list(table.columns)}")
    at = table[np.isclose(table["budget"], budget)]
    if at.empty:
        raise ValueError(f"budget {budget} is not among the table's budgets {sorted(table['budget'].unique())}")
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    variants = list(pd.unique(at[by]))
    levels = list(pd.unique(at[hue]))
    colours = list(level_colours(levels).values())
    width = 0.6 / max(1, len(levels))
    for k, level in enumerate(levels):
        frame = at[at[hue] == level].set_index(by).reindex(variants)
        x = np.arange(len(variants)) + (k - (len(levels) - 1) / 2) * width
        ax.errorbar(x, frame["accuracy_mean"], yerr=frame["accuracy_ci95"].fillna(0), fmt="o", capsize=3,
                    color=colours[k], label=str(level))
    ax.set_xticks(np.arange(len(variants)), variants, rotation=20, ha="right")
    ax.set_ylabel(f"Accuracy at {100 * budget:g}% budget (%)")
    ax.legend(title=hue, bbox_to_anchor=(1.01, 1.0), loc="upper left")  # beside the markers, never over them
    return ax


def panels(
    frame: pd.DataFrame,
    draw: Callable[[pd.DataFrame, Axes], object],
    *,
    by: str = "row",
    ncols: int = 2,
    size: tuple[float, float] = (6.0, 4.0),
) -> Figure:
    """One panel per value of ``by`` (in order of appearance), each drawn by ``draw(subframe, ax)``
    and titled with its value; a shared figure for a notebook's rows."""
    if by not in frame.columns:
        raise ValueError(f"frame has no column {by!r}; it has {list(frame.columns)}")
    set_style()
    levels = list(pd.unique(frame[by]))
    ncols = max(1, min(ncols, len(levels)))
    nrows = -(-len(levels) // ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax, level in zip(axes.flat, levels):
        draw(frame[frame[by] == level], ax)
        ax.set_title(str(level))
    for ax in list(axes.flat)[len(levels):]:
        ax.set_visible(False)
    figure.tight_layout()
    return figure


def format_intervals(frame: pd.DataFrame, by: Sequence[str], values: dict[str, str], *, digits: int = 1) -> pd.DataFrame:
    """Per group of ``by``, each column of ``values`` (``{column: heading}``) as "mean [95% CI]"
    over the group's rows (its seeds; NaN rows dropped, "–" where none is left)."""
    missing = [c for c in [*by, *values] if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; it has {list(frame.columns)}")
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        cells = {}
        for column, heading in values.items():
            summary = mean_ci(group[column].dropna().tolist())
            cells[heading] = format_interval(summary["mean"], summary["low"], summary["high"], digits)
        rows.append({**dict(zip(by, key)), **cells})
    return pd.DataFrame(rows).set_index(list(by))


def reliability_diagram(table: pd.DataFrame, *, hue: str = "regime", ax: Axes | None = None) -> Axes:
    """Accuracy against mean confidence per confidence bin, one line per ``hue`` level, beside the
    diagonal of perfect calibration, and under it how many images each bin holds (% of the level's
    images): one row of :func:`mexit.evaluate.pooled_reliability`. Returns the diagram's axes."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    levels = list(pd.unique(table[hue]))
    colours = level_colours(levels)
    counts_ax = make_axes_locatable(ax).append_axes("bottom", size="30%", pad=0.1, sharex=ax)
    ax.plot([0, 1], [0, 100], linestyle=":", color="grey", label="calibrated")
    width = float((table["high"] - table["low"]).min()) / (len(levels) + 1)
    for offset, level in enumerate(levels):
        part = table[table[hue] == level]
        ax.plot(part["confidence"], 100 * part["accuracy"], marker="o", markersize=4, color=colours[level], label=str(level))
        share = 100 * part["count"] / part["count"].sum()
        counts_ax.bar(part["low"] + width * (offset + 0.5), share, width=width, align="edge", color=colours[level])
    ax.set_ylabel("Accuracy of the bin (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.tick_params(labelbottom=False)
    ax.legend(title=hue, loc="upper left")
    counts_ax.set_xlabel("Confidence (maximum softmax), mean of the bin")
    counts_ax.set_ylabel("Images (%)")
    return ax


def trend_against_size(frame: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """One effect against the backbone's MACs (a log-2 axis, in millions) over the sizes of one
    family: each seed's effects joined by a thin line, the mean over seeds with its 95% t-interval
    at each size and, where the trend was decided (``decided``), the least-squares line through the
    means, whose slope is the trend claim's effect: ``frame`` as :func:`mexit.claims.scaled_effects`
    gives it, one claim and family."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    mmacs = frame.assign(mmacs=frame["macs"] / 1e6)
    for _, seed in mmacs.groupby("seed"):
        ax.plot(seed["mmacs"], seed["effect"], color="grey", alpha=0.5, linewidth=0.8)
    summary = pd.DataFrame([{"mmacs": m, **mean_ci(part["effect"].tolist())} for m, part in mmacs.groupby("mmacs")])
    ax.errorbar(summary["mmacs"], summary["mean"], yerr=[summary["mean"] - summary["low"], summary["high"] - summary["mean"]],
                fmt="o", color="black", capsize=3, label="mean over seeds, 95% CI")
    x = np.log2(summary["mmacs"].to_numpy())
    slope, intercept = np.polyfit(x, summary["mean"].to_numpy(), 1) if len(x) >= 2 else (np.nan, np.nan)
    if np.isfinite(slope) and bool(frame["decided"].all()):
        ax.plot(summary["mmacs"], intercept + slope * x, color="#0072B2", label=f"fitted: {slope:+.2f} points a doubling")
    elif not bool(frame["decided"].all()):
        ax.plot([], [], linestyle="", label="trend untested: no line")
    ax.axhline(0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary["mmacs"], [f"{m:g}" for m in summary["mmacs"].round(1)])
    ax.set_xlabel("Backbone MACs (millions, one input; log scale)")
    ax.set_ylabel("Effect (accuracy points)")
    ax.legend(loc="best", fontsize="small")
    return ax


def time_against_cost(frame: pd.DataFrame, *, hue: str = "regime", ax: Axes | None = None) -> Axes:
    """Measured wall time (% of the backbone alone) against the MACs' prediction (% of the
    backbone's MACs) at each operating point, one series per ``hue`` level, beside the diagonal
    where time follows the MACs: one row of :func:`mexit.analysis.runs.wall_clock_table`."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    points = frame.dropna(subset=["budget"])
    levels = list(pd.unique(points[hue]))
    colours = level_colours(levels)
    top = float(max(points["cost_pct"].max(), points["time_pct"].max(), 100.0)) * 1.05
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="time = MACs")
    for level in levels:
        part = points[points[hue] == level]
        ax.plot(part["cost_pct"], part["time_pct"], marker="o", markersize=5, linestyle="", color=colours[level], label=str(level))
    ax.set_xlabel("Expected cost, MACs (% of the backbone)")
    ax.set_ylabel("Wall time (% of the backbone alone)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(title=hue)
    return ax


def threshold_curve(
    frame: pd.DataFrame, x: str, y: str, *, xlabel: str, ylabel: str, hue: str = "regime", diagonal: bool = False, ax: Axes | None = None
) -> Axes:
    """``y`` against ``x`` along the thresholds, one line per ``hue`` level, each point the mean
    over the level's runs (seeds) at one ``threshold``: one row of the ``"threshold"`` view of
    :func:`mexit.analysis.robustness.ood_table`. ``diagonal`` draws y = x (dotted)."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    if diagonal:
        low, high = float(frame[[x, y]].min().min()), float(frame[[x, y]].max().max())
        ax.plot([low, high], [low, high], linestyle=":", color="grey", label="y = x")
    levels = list(pd.unique(frame[hue]))
    colours = level_colours(levels)
    for level in levels:
        curve = frame[frame[hue] == level].groupby("threshold")[[x, y]].mean().sort_values(x)
        ax.plot(curve[x], curve[y], marker=".", markersize=3, color=colours[level], label=str(level))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(title=hue)
    return ax


def placement_map(choices: pd.DataFrame, blocks: Sequence[int], *, ax: Axes | None = None) -> Axes:
    """The placements chosen for each regime and budget (:func:`mexit.placement_design.choose_placements`)
    as a picture: the dense model's IC positions (the block each reads, 1-based) across, one line per
    regime and budget down, a filled square where the chosen placement keeps an IC (in the regime's
    colour), an empty one where it does not; the number of ICs kept at the right."""
    set_style()
    lines = choices.sort_values(["regime", "budget"], key=lambda c: c.map(REGIME_ORDER.index) if c.name == "regime" else c)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(blocks) + 2.5), 0.4 * len(lines) + 1.2))
    colours = level_colours(list(pd.unique(lines["regime"])))
    for y, line in enumerate(lines.itertuples()):
        kept = set(line.placement or [])
        for x, block in enumerate(blocks):
            chosen = block in kept
            ax.scatter(x, y, marker="s", s=140, facecolor=colours[line.regime] if chosen else "white",
                       edgecolor=colours[line.regime] if chosen else "lightgrey")
        ax.text(len(blocks) - 0.3, y, "none fits" if line.placement is None else f"{len(kept)} IC{'s' if len(kept) != 1 else ''}",
                va="center", fontsize="small")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_yticks(range(len(lines)), [f"{line.regime}, {100 * line.budget:g}%" for line in lines.itertuples()])
    ax.set_xlim(-0.6, len(blocks) + 0.9)
    ax.set_ylim(len(lines) - 0.5, -0.5)
    ax.set_xlabel("IC after block (the dense model's positions)")
    ax.set_ylabel("regime, target budget")
    ax.grid(False)
    return ax
