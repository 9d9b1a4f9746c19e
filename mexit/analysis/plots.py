"""The analysis pages' figures, in the book's style (:func:`mexit.plots.set_style`).

Each takes the long tables of :mod:`mexit.analysis.runs` and averages over seeds where it shows
one value per cell; every figure's caption in the book says so.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from mpl_toolkits.axes_grid1 import make_axes_locatable

from mexit.plots import level_colours, set_style


EXIT_AXIS = "Exit (0-based, the last is the final exit); under it, bN: the block it reads"
"""How the dominance plots name an exit: its index, as every plot of the book numbers exits, and its block."""


def dominance_heatmap(probes: pd.DataFrame, *, value: str = "share", ax: Axes | None = None) -> Axes:
    """Block (rows, 1 = first) x exit (columns, by the block feeding it) of ``value`` (share or
    cosine), mean over seeds: the probes of one row and regime at one step of each run."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    grid = probes.pivot_table(index="block", columns=["exit", "exit_block"], values=value, aggfunc="mean")
    image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="upper")
    ax.set_xticks(range(grid.shape[1]), [f"{e}\nb{b}" for e, b in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xlabel(EXIT_AXIS)
    ax.set_ylabel("Backbone block")
    ax.grid(False)
    for (i, j), cell in np.ndenumerate(grid.to_numpy()):
        if not np.isnan(cell):
            ax.text(j, i, f"{cell:.2f}", ha="center", va="center", fontsize=9, color="white" if cell < 0.5 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=value)
    return ax


def dominance_grid(snapshots: dict[str, pd.DataFrame], regimes: list[str], *, value: str = "share") -> Figure:
    """One :func:`dominance_heatmap` per (regime, moment): a row per regime, a column per moment.
    ``snapshots`` maps a moment's name ("start of P2", "end of P2") to the probes of one row at
    that moment; a regime a moment lacks leaves its panel out. Two panels a row keep the cells'
    values readable at the book's text width."""
    set_style()
    figure, axes = plt.subplots(len(regimes), len(snapshots), figsize=(5.2 * len(snapshots), 4.2 * len(regimes)), squeeze=False)
    for ax_row, regime in zip(axes, regimes):
        for ax, (moment, frame) in zip(ax_row, snapshots.items()):
            part = frame[frame["regime"] == regime]
            if part.empty:
                ax.set_visible(False)
                continue
            dominance_heatmap(part, value=value, ax=ax)
            ax.set_title(f"{regime}, {moment}")
    figure.tight_layout()
    return figure


def dominance_trace(traces: pd.DataFrame, block: int, *, ax: Axes | None = None) -> Axes:
    """Each exit's gradient share at ``block`` over the steps of P2 (mean over seeds; the band spans
    the seeds' lowest and highest), one line per exit: the traces of one row and regime."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    at = traces[traces["block"] == block]
    exits = sorted(at[["exit", "exit_block"]].drop_duplicates().itertuples(index=False))
    colours = dict(zip(exits, sns.color_palette("viridis", n_colors=len(exits))))
    for exit_index, exit_block in exits:
        stats = at[at["exit"] == exit_index].groupby("step")["share"].agg(["mean", "min", "max"])
        colour = colours[(exit_index, exit_block)]
        ax.plot(stats.index, stats["mean"], color=colour, label=f"{exit_index} (block {exit_block})")
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("Step of P2")
    ax.set_ylabel(f"Gradient share at block {block}")
    ax.set_ylim(0, 1)
    ax.legend(title="exit (0-based)", fontsize=7, ncols=2)
    return ax


def path_curves(paths: pd.DataFrame, *, value: str = "loss", ax: Axes | None = None) -> Axes:
    """``value`` (loss or accuracy) of every exit along the paths of one pair, row and seed: solid
    for the linear path, dashed for the Bezier curve (a ``path`` column), colour by exit depth."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    exits = sorted(paths["exit"].unique())
    colours = dict(zip(exits, sns.color_palette("viridis", n_colors=len(exits))))
    styles = {"linear": "-", "bezier": "--"}
    for (kind, exit_index), curve in paths.groupby(["path", "exit"], sort=False):
        curve = curve.sort_values("alpha")
        first = exit_index in (exits[0], exits[-1])
        label = f"exit {exit_index} ({kind})" if first else None
        ax.plot(curve["alpha"], curve[value], styles[kind], color=colours[exit_index], label=label, linewidth=1.2)
    ax.set_xlabel("Position on the path (0: first regime, 1: second)")
    ax.set_ylabel("Test loss (nats)" if value == "loss" else "Test accuracy (%)")
    ax.legend(fontsize=7)
    return ax


def path_grid(paths: pd.DataFrame) -> Figure:
    """:func:`path_curves` of one row and seed: one column per regime pair (in order of
    appearance), the loss above and the accuracy below."""
    set_style()
    pairs = list(pd.unique(paths["pair"]))
    figure, axes = plt.subplots(2, len(pairs), figsize=(4.8 * len(pairs), 7.2), squeeze=False)
    for column, pair in enumerate(pairs):
        for row, value in enumerate(("loss", "accuracy")):
            ax = axes[row][column]
            path_curves(paths[paths["pair"] == pair], value=value, ax=ax)
            ax.set_title(pair)
            if column or row:
                ax.get_legend().remove()
    figure.tight_layout()
    return figure


PLANE_LEVELS = 13
"""Contour levels of the loss plane (a labelled tick at every second one)."""


def plane_contour(grid: pd.DataFrame, anchors: pd.DataFrame, *, value: str = "loss", ax: Axes | None = None) -> Axes:
    """Contours of ``value`` (the final exit's loss or accuracy) on the plane of one row, with the
    three regimes' solutions marked: :func:`mexit.analysis.runs.connectivity_plane`."""
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    final = grid[grid["exit"] == grid["exit"].max()]
    table = final.pivot_table(index="v", columns="u", values=value)
    values = table.to_numpy()
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if value == "loss":  # levels evenly spaced on a log scale: the basins' floor and the walls between them both resolved
        levels = np.geomspace(max(low, 1e-3), max(high, 2e-3), PLANE_LEVELS)
        norm, ticks, fmt = LogNorm(levels[0], levels[-1]), levels[::2], "%.2g"
        values = np.clip(values, levels[0] / 2, None)  # a loss of 0 (no log) shows in the lowest colour
    else:
        levels = np.linspace(low, max(high, low + 1e-6), PLANE_LEVELS)
        norm, ticks, fmt = None, levels[::2], "%.0f"
    filled = ax.contourf(table.columns, table.index, values, levels=levels, norm=norm, extend="both",
                         cmap="viridis_r" if value == "loss" else "viridis")
    ax.set_aspect("equal")
    bar_axes = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.1)  # as tall as the plot
    ax.figure.colorbar(
        filled, cax=bar_axes, ticks=ticks, format=fmt,
        label="Test loss, final exit (nats, log scale)" if value == "loss" else "Test accuracy, final exit (%)",
    )
    for _, anchor in anchors.iterrows():
        ax.plot(anchor["u"], anchor["v"], marker="o", color="white", markeredgecolor="black", markersize=8)
        ax.annotate(anchor["regime"], (anchor["u"], anchor["v"]), textcoords="offset points", xytext=(6, 6), color="black",
                    fontsize=9, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0})
    ax.set_xlabel("u (parameter distance)")
    ax.set_ylabel("v (parameter distance)")
    ax.grid(False)
    return ax


POSITIONS: dict[str, str] = {
    "block": "Backbone block",
    "exit": "Exit (0-based; the last is the final exit)",
    "severity": "Corruption severity (0: clean)",
}


def block_profile(
    table: pd.DataFrame,
    value: str,
    *,
    label: str | None = None,
    ceiling: str | None = None,
    position: str = "block",
    ax: Axes | None = None,
) -> Axes:
    """``value`` per ``position`` (``"block"``, ``"exit"`` or ``"severity"``), one line per regime (mean over seeds;
    the band spans the lowest and highest seed): one row of :func:`mexit.analysis.runs.rank_table`,
    ``information_table``, :func:`mexit.evaluate.exit_calibration` or
    :func:`mexit.analysis.robustness.severity_means`. ``ceiling`` names a column
    whose (first) value is drawn as a dotted line: the most the value can reach."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {tuple(POSITIONS)}, got {position!r}")
    set_style()
    if ax is None:
        _, ax = plt.subplots()
    regimes = list(pd.unique(table["regime"]))
    colours = level_colours(regimes)
    for regime in regimes:
        stats = table[table["regime"] == regime].groupby(position)[value].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], marker="o", markersize=4, color=colours[regime], label=regime)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colours[regime], alpha=0.15, linewidth=0)
    if ceiling is not None:
        ax.axhline(float(table[ceiling].iloc[0]), linestyle=":", color="grey", label=ceiling.replace("_", " "))
    ax.set_xlabel(POSITIONS[position])
    ax.set_ylabel(label or value)
    ax.set_xticks(sorted(table[position].unique()))
    ax.legend(title="regime")
    return ax
