"""The book's figure and table helpers: lines, markers, labels and table cells (not pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mexit.evaluate import ExitOutputs, Scoring, budget_table, patience_sweep, single_exits, sweep  # noqa: E402
from mexit.plots import format_budget_table, flops_accuracy, set_style  # noqa: E402

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 4, 50)
COSTS = np.array([2.0, 5.0, 11.0])


def run(regime: str, seed: int) -> ExitOutputs:
    logits = np.random.default_rng(seed).normal(0, 2, size=(3, 50, 4))
    return ExitOutputs(logits, LABELS, COSTS, 10.0, tags={"regime": regime, "method": "sdn", "seed": seed})


RUNS = [run(regime, seed) for regime in ("disjoint", "joint", "mixed") for seed in (0, 1)]


def frames(fn) -> pd.DataFrame:
    """``fn`` (a sweep or single_exits) over every run, tagged."""
    return pd.concat(fn(r.test_logits, r.test_labels, r.costs, r.backbone_cost).assign(**r.tags) for r in RUNS)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_set_style():
    plt.rcParams["axes.spines.top"] = True
    set_style()
    assert plt.rcParams["axes.spines.top"] is False and plt.rcParams["axes.grid"]


def test_flops_accuracy_lines_markers_labels():
    curves, singles = frames(sweep), frames(single_exits)
    ax = flops_accuracy(curves, hue="regime", singles=singles, backbone=(100.0, 50.0))
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["disjoint", "joint", "mixed"]
    # one line per regime, averaged over its two seeds threshold by threshold
    mixed = curves[curves["regime"] == "mixed"].groupby("threshold")[["cost_pct", "accuracy"]].mean()
    np.testing.assert_allclose(lines[2].get_xdata(), mixed["cost_pct"])
    np.testing.assert_allclose(lines[2].get_ydata(), mixed["accuracy"])
    # 3 regimes x 3 exits x 2 seeds single-exit dots, in the line's colour
    dots = ax.collections[:3]
    assert sum(len(c.get_offsets()) for c in dots) == 18
    np.testing.assert_allclose(dots[0].get_facecolor()[0][:3], lines[0].get_color())
    star = ax.collections[-1]
    assert star.get_label() == "backbone only" and star.get_offsets().tolist() == [[100.0, 50.0]]
    assert "MACs" in ax.get_xlabel() and "%" in ax.get_xlabel() and "%" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["disjoint", "joint", "mixed", "single exits", "backbone only"]


def test_flops_accuracy_patience_curves_on_given_axes():
    _, ax = plt.subplots()
    assert flops_accuracy(frames(patience_sweep), ax=ax) is ax
    assert len(ax.get_lines()) == 3 and len(ax.get_lines()[0].get_xdata()) == 3  # patience 0..2
    # threshold and patience curves in one frame (an ablation's panel): each line on its own points
    both = pd.concat([frames(sweep).assign(regime="sdn"), frames(patience_sweep).assign(regime="pbee")], ignore_index=True)
    _, ax = plt.subplots()
    flops_accuracy(both, ax=ax)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [len(frames(sweep)["threshold"].unique()), 3]
    _, ax = plt.subplots()
    flops_accuracy(both[both["regime"] == "pbee"], ax=ax)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3]


def test_flops_accuracy_rejects_missing_columns():
    with pytest.raises(ValueError, match="curves must have columns 'dataset'"):
        flops_accuracy(frames(sweep), hue="dataset")
    with pytest.raises(ValueError, match="singles must have columns"):
        flops_accuracy(frames(sweep), singles=frames(single_exits).drop(columns="regime"))


def test_format_budget_table():
    table = format_budget_table(budget_table(RUNS, Scoring(budgets=(0.1, 0.5, 1.0)), by=("regime",)))
    assert list(table.columns) == ["10%", "50%", "100%", "final exit"]
    assert table.columns.name == "accuracy %, mean ± std over seeds"
    assert format_budget_table(budget_table(RUNS, by=("regime",)), ci=True).columns.name == "accuracy %, mean [95% CI] over seeds"
    assert table.index.name == "regime" and table.index.tolist() == ["disjoint", "joint", "mixed"]
    assert table.loc["mixed", "10%"] == "–"  # exit 0 alone costs 20% of the backbone
    mixed = budget_table(RUNS[4:], Scoring(budgets=(0.5,)), by=("regime",)).iloc[0]
    assert table.loc["mixed", "50%"] == f"{mixed['accuracy_mean']:.1f} ± {mixed['accuracy_std']:.1f}"
    single = format_budget_table(budget_table(RUNS[:1], Scoring(budgets=(1.0,)), by=("regime", "method")), digits=2)
    assert single.index.names == ["regime", "method"]
    assert " ± " not in single.iloc[0]["100%"] and len(single.iloc[0]["final exit"].split(".")[1]) == 2
    with pytest.raises(ValueError, match="budget_table"):
        format_budget_table(pd.DataFrame({"x": [1]}))


def test_budget_table_cells_with_ci_and_differences_view():
    from mexit.evaluate import paired_differences, run_points
    from mexit.plots import format_differences

    table = budget_table(RUNS, Scoring(budgets=[1.0]), by=("regime",))
    row = table[table["regime"] == "mixed"].iloc[0]
    cell = format_budget_table(table, ci=True).loc["mixed", "100%"]
    mean, std, half = row["accuracy_mean"], row["accuracy_std"], row["accuracy_ci95"]
    assert cell == f"{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]"
    assert format_budget_table(table).loc["mixed", "100%"] == f"{mean:.1f} ± {std:.1f}"
    points = run_points(RUNS, Scoring(budgets=[0.5, 1.0])).assign(row="R")
    diffs = paired_differences(points, [("mixed", "joint")])
    view = format_differences(diffs)
    assert list(view.columns) == ["50%", "100%"] and view.index.tolist() == [("R", "mixed - joint")]
    d = diffs[diffs["budget"] == 1.0].iloc[0]
    assert view.loc[("R", "mixed - joint"), "100%"] == f"{d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def test_band_spans_the_seeds_and_panels_take_one_row_each():
    from mexit.plots import exit_accuracies, panels, validation_curves

    curves = frames(sweep)
    ax = flops_accuracy(curves, hue="regime", band="seed")
    assert len(ax.collections) == 3  # one band per regime
    with pytest.raises(ValueError, match="band"):
        flops_accuracy(curves, band="replicate")
    two_rows = pd.concat([curves.assign(row="A"), curves.assign(row="B"), curves.assign(row="C")])
    figure = panels(two_rows, lambda frame, ax: flops_accuracy(frame, ax=ax), ncols=2)
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["A", "B", "C"] and len(figure.axes) == 4
    exits = frames(single_exits)
    ax = exit_accuracies(exits)
    assert len(ax.get_lines()) >= 3 and ax.get_legend() is not None
    trace = pd.DataFrame(
        {"phase": ["P1", "P1", "P2", "P2"], "step": [1, 2, 1, 2], "val_acc_0": [1, 2, 3, 4], "val_acc_1": [10.0, 20.0, 30.0, 40.0],
         "regime": "mixed", "seed": 0}
    )
    ax = validation_curves(trace)
    line = ax.get_lines()[0]
    assert line.get_xdata().tolist() == [1, 2, 3, 4] and line.get_ydata().tolist() == [10.0, 20.0, 30.0, 40.0]
    # a shallower row's frame from a concatenation with a deeper one: its own last exit is plotted
    ax = validation_curves(trace.assign(val_acc_2=np.nan))
    assert ax.get_lines()[0].get_ydata().tolist() == [10.0, 20.0, 30.0, 40.0]
    plt.close("all")


def test_variant_accuracy_marks_each_regime_per_variant_with_its_ci():
    from mexit.plots import variant_accuracy

    runs = [
        ExitOutputs(r.test_logits, r.test_labels, r.costs, r.backbone_cost, tags={**r.tags, "variant": variant})
        for variant in ("small", "large") for r in RUNS
    ]
    table = budget_table(runs, Scoring(budgets=(0.5, 1.0)), by=("variant", "regime"))
    ax = variant_accuracy(table, budget=1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["small", "large"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["disjoint", "joint", "mixed"]
    means = [line.get_ydata() for line in ax.lines if len(line.get_ydata()) == 2]
    at_full = table[table["budget"] == 1.0]
    assert np.allclose(means[0], at_full[at_full["regime"] == "disjoint"]["accuracy_mean"])
    assert "100% budget" in ax.get_ylabel()
    with pytest.raises(ValueError, match="budget 0.25 is not among"):
        variant_accuracy(table, budget=0.25)
    with pytest.raises(ValueError, match="variant"):
        variant_accuracy(budget_table(RUNS, by=("regime",)))


def test_a_regime_keeps_its_colour_in_every_panel():
    from mexit.plots import level_colours

    every = level_colours(["disjoint", "joint", "mixed"])
    assert level_colours(["mixed"])["mixed"] == every["mixed"] and level_colours(["joint", "mixed"])["joint"] == every["joint"]
    other = level_colours(["dense", "mixed"])
    assert other["mixed"] == every["mixed"] and other["dense"] not in every.values()
    _, ax = plt.subplots()
    flops_accuracy(frames(sweep)[lambda f: f["regime"] == "mixed"], ax=ax)
    assert matplotlib.colors.same_color(ax.get_lines()[0].get_color(), every["mixed"])
