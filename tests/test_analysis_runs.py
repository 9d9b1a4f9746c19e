"""The analyses over a study's stored runs: tagged tables, cached in the run store, parameters
checked before anything trains; the loss plane on a constructed case; the analysis figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from mexit.analysis import linear_path, loss_plane, plane_anchors  # noqa: E402
from mexit.analysis import runs as analysis_runs  # noqa: E402
from mexit.analysis.plots import block_profile, dominance_grid, dominance_heatmap, path_grid, plane_contour  # noqa: E402
from mexit.models import build  # noqa: E402
from mexit.store import RunStore  # noqa: E402
from mexit.study import ParameterError, Study, make_study  # noqa: E402

ROW = {"label": "tiny", "config": "tiny", "overrides": []}


def _study(root: Path, **changes: Any) -> Study:
    params: dict[str, Any] = {"rows": [ROW], "seeds": [0, 1], "regimes": ["disjoint", "joint", "mixed"], "runs_root": str(root)}
    return make_study(**{**params, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The tiny study's six runs, trained once for this module."""
    s = _study(tmp_path_factory.mktemp("runs"))
    s.runs()
    return s


def _recomputed(*args: Any, **kwargs: Any) -> pd.DataFrame:
    """Stands in for an analysis that a cached table must not run again."""
    raise AssertionError("a cached analysis was computed again")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- the run store's analysis cache

def test_cached_table_computes_once_per_inputs_and_keeps_the_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    calls: list[int] = []

    def compute() -> pd.DataFrame:
        calls.append(1)
        return pd.DataFrame({"block": [1, 2], "rank": [3, 4]})

    first = store.cached_table("rank", {"runs": ["abc"], "samples": 10}, compute, code="mexit.analysis.rank")
    again = store.cached_table("rank", {"runs": ["abc"], "samples": 10}, compute, code="mexit.analysis.rank")
    other = store.cached_table("rank", {"runs": ["abc"], "samples": 20}, compute, code="mexit.analysis.rank")
    assert len(calls) == 2
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, other)
    files = sorted((tmp_path / "analyses" / "rank").glob("*.csv"))
    assert len(files) == 2 and not list((tmp_path / "analyses" / "rank").glob(".*.tmp"))
    with pytest.raises(ValueError, match="kind"):
        store.cached_table("../escape", {}, compute, code="mexit.analysis.rank")


def test_a_failed_computation_stores_nothing(tmp_path: Path) -> None:
    store = RunStore(tmp_path)

    def broken() -> pd.DataFrame:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.cached_table("rank", {"runs": ["abc"]}, broken, code="mexit.analysis.rank")
    assert not list((tmp_path / "analyses" / "rank").glob("*.csv"))


# ---------------------------------------------------------------- the loss plane

def _perturbed(model: nn.Module, name: str, scale: float) -> nn.Module:
    other = build("resnet20", 10, in_chans=1, img_size=8, placement=[3])
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        parameter = dict(other.named_parameters())[name]
        parameter.add_(scale * torch.ones_like(parameter))
    return other


def test_plane_corners_are_the_three_models_when_they_span_a_right_angle() -> None:
    torch.manual_seed(0)
    origin = build("resnet20", 10, in_chans=1, img_size=8, placement=[3])
    first_conv = next(n for n, p in origin.named_parameters() if p.ndim == 4)
    last_weight = [n for n, p in origin.named_parameters() if p.ndim == 2][-1]
    along = _perturbed(origin, first_conv, 0.05)  # orthogonal directions: disjoint parameters
    across = _perturbed(origin, last_weight, 0.02)
    anchors = plane_anchors([origin, along, across])
    d1 = 0.05 * dict(origin.named_parameters())[first_conv].numel() ** 0.5
    d2 = 0.02 * dict(origin.named_parameters())[last_weight].numel() ** 0.5
    assert np.allclose(anchors[["u", "v"]].to_numpy(), [[0, 0], [d1, 0], [0, d2]], atol=1e-4)

    images = TensorDataset(torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 10)
    plane = loss_plane([origin, along, across], images, images, points=2, margin=0.0, bn_batches=1, batch_size=32)
    assert len(plane) == 4 * origin.num_exits
    ends = linear_path(origin, along, images, images, points=2, bn_batches=1, batch_size=32)
    for alpha, u in ((0.0, 0.0), (1.0, d1)):  # the corners on the u axis are the path's ends
        expected = ends[ends["alpha"] == alpha].sort_values("exit")
        got = plane[np.isclose(plane["u"], u, atol=1e-6) & np.isclose(plane["v"], 0.0, atol=1e-6)].sort_values("exit")
        assert len(got) == origin.num_exits
        assert np.allclose(got["loss"].to_numpy(), expected["loss"].to_numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="one line"):
        plane_anchors([origin, along, _perturbed(origin, first_conv, 0.1)])
    with pytest.raises(ValueError, match="three models"):
        plane_anchors([origin, along])


# ---------------------------------------------------------------- bad parameters, before training

@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda s: analysis_runs.connectivity_paths(s, "linear", points=1), "points"),
        (lambda s: analysis_runs.connectivity_paths(s, "curved"), "path"),
        (lambda s: analysis_runs.connectivity_paths(s, "bezier", bezier_lr=0), "bezier_lr"),
        (lambda s: analysis_runs.connectivity_paths(s, "linear", seeds=[7]), "seeds"),
        (lambda s: analysis_runs.connectivity_paths(s, "linear", eval_samples=1), "eval_samples"),
        (lambda s: analysis_runs.connectivity_plane(s, 0, margin=-1), "margin"),
        (lambda s: analysis_runs.seed_pair_paths(s, regimes=("hybrid",)), "regimes"),
        (lambda s: analysis_runs.seed_pair_paths(_study(Path(s.runs_root), seeds=[0])), "seeds"),
        (lambda s: analysis_runs.connectivity_plane(s, 5), "seeds"),
        (lambda s: analysis_runs.rank_table(s, eig_threshold=2.0), "eig_threshold"),
        (lambda s: analysis_runs.rank_table(s, samples=1), "samples"),
        (lambda s: analysis_runs.information_table(s, noise_ratio=0), "noise_ratio"),
        (lambda s: analysis_runs.information_table(s, max_features=0), "max_features"),
    ],
)
def test_bad_analysis_parameters_are_named_before_anything_trains(call: Any, named: str, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match=named):
        call(_study(tmp_path))
    assert not (tmp_path / "runs").exists()


def test_a_row_without_probes_is_named_before_anything_trains(tmp_path: Path) -> None:
    unprobed = {"label": "plain", "config": "tiny", "overrides": ["train.dominance_every=0"]}
    with pytest.raises(ParameterError, match=r"\['plain'\].*dominance_every"):
        analysis_runs.dominance_traces(_study(tmp_path, rows=[unprobed]))
    with pytest.raises(ParameterError, match="three"):
        analysis_runs.connectivity_plane(_study(tmp_path, regimes=["joint", "mixed"]), 0)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- on the tiny study's runs

def test_dominance_traces_start_and_end_of_p2(trained: Study) -> None:
    traces = analysis_runs.dominance_traces(trained)
    assert set(traces["regime"]) == {"joint", "mixed"} and set(traces["seed"]) == {0, 1}
    start, end = analysis_runs.dominance_at(traces, "start"), analysis_runs.dominance_at(traces, "end")
    assert set(start["step"]) == {0}
    assert end.groupby(["regime", "seed"])["step"].first().eq(traces.groupby(["regime", "seed"])["step"].max()).all()  # no early stop: the last state kept
    assert (traces["kept_step"] >= traces.groupby(["regime", "seed"])["step"].transform("max")).all()
    assert np.allclose(end.groupby(["regime", "seed", "block"])["share"].sum(), 1)
    with pytest.raises(ValueError, match="when"):
        analysis_runs.dominance_at(traces, "middle")
    final = analysis_runs.middle_final_shares(end)  # tiny: ResNet-20, 9 blocks, exits after 3, 6, 9
    assert set(final["block"]) == {4, 5, 6} and set(final["exit_block"]) == {9}
    assert len(final) == 2 * 2 * 3  # regimes x seeds x middle blocks


def test_the_end_of_p2_is_the_last_probe_at_or_before_the_state_the_run_kept() -> None:
    """Early stopping keeps the best state, up to its patience before the last step: the end's
    probe describes that stored model (the one every other analysis reads), not a discarded one."""
    steps = [0, 40, 80, 120]
    traces = pd.DataFrame([{"row": "r", "regime": regime, "seed": 0, "step": step, "block": 1, "exit_block": 1, "share": 1.0,
                            "kept_step": kept} for regime, kept in (("joint", 100), ("mixed", 120)) for step in steps])
    end = analysis_runs.dominance_at(traces, "end")
    assert end.set_index("regime")["step"].to_dict() == {"joint": 80, "mixed": 120}
    with pytest.raises(ValueError, match="kept_step"):
        analysis_runs.dominance_at(traces.drop(columns="kept_step"), "end")


def test_equilibrium_traces_come_from_joint_runs_with_gradient_equilibrium(trained: Study) -> None:
    traces = analysis_runs.equilibrium_traces(trained)
    assert set(traces["regime"]) == {"joint + GE"} and set(traces["seed"]) == {0, 1}
    configs = [run.config.train for run in RunStore(trained.runs_root).runs() if run.config.train.gradient_equilibrium]
    assert sorted((c.regime, c.seed) for c in configs) == [("joint", 0), ("joint", 1)]


def test_paths_barriers_and_plane_are_tagged_and_cached(trained: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    linear = analysis_runs.connectivity_paths(trained, "linear", points=3, bn_batches=1, eval_samples=64)
    exits = int(linear["exit"].max()) + 1
    assert len(linear) == 2 * 3 * 3 * exits  # seeds x pairs x points x exits
    assert list(pd.unique(linear["pair"])) == ["disjoint–mixed", "joint–mixed", "disjoint–joint"]
    bezier = analysis_runs.connectivity_paths(trained, "bezier", seeds=[1], points=3, bn_batches=1, eval_samples=64, bezier_steps=2)
    assert set(bezier["seed"]) == {1} and set(bezier["path"]) == {"bezier"}
    barriers = analysis_runs.barrier_table(pd.concat([linear, bezier]))
    assert len(barriers) == (2 * 3 + 3) * exits and (barriers["loss_barrier"] >= 0).all()
    summary = analysis_runs.barrier_summary(barriers)
    assert summary.loc[("tiny", "joint–mixed", "linear", "final exit"), "seeds"] == 2
    assert summary.loc[("tiny", "joint–mixed", "bezier", "final exit"), "seeds"] == 1

    grid, anchors = analysis_runs.connectivity_plane(trained, 0, points=3, bn_batches=1, eval_samples=64)
    assert len(grid) == 9 * exits and list(anchors["regime"]) == ["disjoint", "joint", "mixed"]

    controls = analysis_runs.seed_pair_paths(trained, points=3, bn_batches=1, eval_samples=64)  # seeds 0 and 1 of joint, of mixed
    assert list(pd.unique(controls["pair"])) == [analysis_runs.seed_pair_label("joint"), analysis_runs.seed_pair_label("mixed")]
    assert len(controls) == 2 * 3 * exits and set(controls["seed"]) == {0}
    assert (controls["regime_a"] == controls["regime_b"]).all()
    starts = controls[controls["alpha"] == 0.0].set_index(["pair", "exit"])["accuracy"]
    joint_s0 = linear[(linear["pair"] == "joint–mixed") & (linear["seed"] == 0) & (linear["alpha"] == 0.0)].set_index("exit")["accuracy"]
    assert np.allclose(starts.loc[analysis_runs.seed_pair_label("joint")].to_numpy(), joint_s0.to_numpy())  # it starts at joint's seed 0
    assert analysis_runs.barrier_summary(analysis_runs.barrier_table(controls)).loc[("tiny", analysis_runs.seed_pair_label("mixed"), "linear", "final exit"), "seeds"] == 1

    for name in ("linear_path", "bezier_path", "loss_plane"):
        monkeypatch.setattr(analysis_runs, name, _recomputed)
    pd.testing.assert_frame_equal(analysis_runs.connectivity_paths(trained, "linear", points=3, bn_batches=1, eval_samples=64), linear)
    analysis_runs.connectivity_plane(trained, 0, points=3, bn_batches=1, eval_samples=64)


def test_rank_and_information_tables_per_run(trained: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = analysis_runs.rank_table(trained, samples=100)
    blocks = int(ranks["block"].max())
    assert len(ranks) == 6 * blocks and set(ranks["regime"]) == {"disjoint", "joint", "mixed"}
    assert (ranks["samples"] == 100).all() and ranks["rank"].between(0, ranks["max_rank"]).all()
    assert np.allclose(ranks["rank_pct"], 100 * ranks["rank"] / ranks["max_rank"])
    information = analysis_runs.information_table(trained, samples=100, probe_dim=8)
    assert len(information) == 6 * blocks and (information["samples"] == 100).all()

    monkeypatch.setattr(analysis_runs, "block_ranks", _recomputed)
    pd.testing.assert_frame_equal(analysis_runs.rank_table(trained, samples=100), ranks)


# ---------------------------------------------------------------- the figures

def test_dominance_heatmap_shows_the_mean_share_over_seeds() -> None:
    probes = pd.DataFrame(
        {"block": [1, 1, 2, 1, 1, 2], "exit": [0, 1, 1, 0, 1, 1], "exit_block": [1, 2, 2, 1, 2, 2],
         "share": [0.2, 0.8, 1.0, 0.4, 0.6, 1.0], "seed": [0, 0, 0, 1, 1, 1]}
    )
    ax = dominance_heatmap(probes)
    shown = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    assert np.allclose(shown[0], [0.3, 0.7]) and np.isnan(shown[1][0]) and shown[1][1] == 1.0  # exit 0 does not reach block 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0\nb1", "1\nb2"]  # exits 0-based, as every plot numbers them


def test_dominance_grid_puts_a_regime_a_row_and_two_moments_a_row() -> None:
    """Two heatmaps a row (not three regimes side by side), so that their cells' values are
    readable once the figure is fitted to the book's text column."""
    probes = pd.DataFrame({"block": [1, 1], "exit": [0, 1], "exit_block": [1, 2], "share": [0.4, 0.6], "seed": [0, 0]})
    moments = {m: pd.concat(probes.assign(regime=r) for r in ("joint", "mixed")) for m in ("start of P2", "end of P2")}
    figure = dominance_grid(moments, ["disjoint", "joint", "mixed"])
    shown = [ax for ax in figure.axes if ax.get_visible() and ax.images]
    assert [ax.get_title() for ax in shown] == ["joint, start of P2", "joint, end of P2", "mixed, start of P2", "mixed, end of P2"]
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2  # two rows of two
    assert min(text.get_fontsize() for ax in shown for text in ax.texts) * 7.5 / figure.get_figwidth() >= 6  # points at a 7.5-inch column


def test_block_profile_draws_the_mean_per_regime_and_the_ceiling() -> None:
    table = pd.DataFrame({"regime": ["joint"] * 4, "seed": [0, 0, 1, 1], "block": [1, 2, 1, 2], "bits": [1.0, 2.0, 3.0, 4.0], "top": 5.0})
    ax = block_profile(table, "bits", ceiling="top")
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [2.0, 3.0] and ax.get_lines()[-1].get_ydata()[0] == 5.0


def test_path_grid_and_plane_contour_draw_every_pair_and_every_regime() -> None:
    alpha = np.linspace(0, 1, 3)
    paths = pd.concat(
        pd.DataFrame({"pair": pair, "path": "linear", "alpha": alpha, "exit": exit_index, "loss": alpha, "accuracy": 50.0})
        for pair in ("a–b", "b–c")
        for exit_index in (0, 1)
    )
    figure = path_grid(paths)
    assert [ax.get_title() for ax in figure.axes] == ["a–b", "b–c", "a–b", "b–c"]
    assert all(len(ax.get_lines()) == 2 for ax in figure.axes)
    u, v = np.meshgrid(np.linspace(0, 2, 3), np.linspace(0, 1, 3))
    grid = pd.DataFrame({"u": u.ravel(), "v": v.ravel(), "exit": 1, "loss": (u + v).ravel(), "accuracy": 0.0})
    anchors = pd.DataFrame({"regime": ["disjoint", "joint", "mixed"], "u": [0.0, 2.0, 1.0], "v": [0.0, 0.0, 1.0]})
    ax = plane_contour(grid, anchors)
    assert [t.get_text() for t in ax.texts] == ["disjoint", "joint", "mixed"]
    bar = ax.figure.axes[-1]  # the colour bar: as tall as the plot, its levels evenly spaced on a log scale and labelled
    assert bar.get_position().height == pytest.approx(ax.get_position().height, rel=0.05)
    levels = ax.collections[0].levels if hasattr(ax.collections[0], "levels") else None
    assert levels is not None and np.allclose(np.diff(np.log(levels)), np.diff(np.log(levels))[0])
    assert len([t for t in bar.get_yticklabels() if t.get_text()]) >= 5
