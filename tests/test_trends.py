"""The scaling page's trend: a per-seed least-squares slope against log2 of the MACs, and its claims."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mexit import claims
from mexit.evaluate.trends import per_doubling_slopes, size_effects

MACS = {"small": 10e6, "medium": 20e6, "large": 80e6}  # log2: +0, +1, +3 doublings


def _effects(slope: float, offsets: list[float]) -> dict[str, pd.Series]:
    """Each seed's effect: offset + slope x doublings of MACs above the smallest size."""
    return {size: pd.Series([o + slope * np.log2(m / MACS["small"]) for o in offsets]) for size, m in MACS.items()}


def test_a_known_slope_is_recovered_for_every_seed_whatever_its_offset() -> None:
    slopes = per_doubling_slopes(_effects(1.5, [0.0, 3.0, -2.0]), MACS)
    assert slopes.tolist() == pytest.approx([1.5, 1.5, 1.5]) and slopes.index.tolist() == [0, 1, 2]
    noisy = _effects(-0.5, [0.0, 1.0])
    noisy["medium"] = noisy["medium"] + pd.Series([0.3, -0.3])
    fitted = per_doubling_slopes(noisy, MACS)
    x = np.log2([MACS[s] for s in MACS])
    for seed in (0, 1):  # the least-squares slope, as numpy fits it
        assert fitted[seed] == pytest.approx(np.polyfit(x, [noisy[s][seed] for s in MACS], 1)[0])


def test_only_seeds_with_an_effect_at_every_size_enter() -> None:
    effects = _effects(1.0, [0.0, 0.0, 0.0])
    effects["large"] = effects["large"].drop(1)
    assert per_doubling_slopes(effects, MACS).index.tolist() == [0, 2]
    frame = size_effects(effects, MACS)
    assert len(frame) == 8 and set(frame.columns) == {"row", "macs", "seed", "effect"}


def test_a_trend_needs_two_sizes_of_different_cost_and_each_sizes_macs() -> None:
    with pytest.raises(ValueError, match="two sizes of different MACs"):
        per_doubling_slopes({"small": pd.Series([1.0])}, MACS)
    with pytest.raises(ValueError, match="two sizes of different MACs"):
        per_doubling_slopes({"a": pd.Series([1.0]), "b": pd.Series([2.0])}, {"a": 5.0, "b": 5.0})
    with pytest.raises(ValueError, match="no MACs for the sizes"):
        per_doubling_slopes({"small": pd.Series([1.0]), "huge": pd.Series([2.0])}, MACS)


def _points(gap: dict[str, float], catch_up: dict[str, float] | None = None, seeds: int = 5) -> pd.DataFrame:
    """Per size, seed and budget: joint 60, mixed 60 + the size's ``gap`` + 0.1 x seed, disjoint 50 +
    the size's ``catch_up`` + 0.05 x seed."""
    catch_up = catch_up or dict.fromkeys(gap, 0.0)

    def accuracy(size: str, regime: str, seed: int) -> float:
        if regime == "mixed":
            return 60.0 + gap[size] + 0.1 * seed
        return 60.0 if regime == "joint" else 50.0 + catch_up[size] + 0.05 * seed

    return pd.DataFrame([
        {"row": size, "regime": regime, "seed": seed, "budget": budget, "accuracy": accuracy(size, regime, seed)}
        for size in gap for regime in ("disjoint", "joint", "mixed") for seed in range(seeds) for budget in (0.25, 0.5, 0.75, 1.0)
    ])


def _evidence(points: pd.DataFrame, failing: set[tuple[str, str, int]] = frozenset()) -> pd.DataFrame:
    runs = points[["row", "regime", "seed"]].drop_duplicates().reset_index(drop=True)
    keys = list(zip(runs["row"], runs["regime"], runs["seed"]))
    return runs.assign(evidence=[k not in failing for k in keys], early_stopped=True, learned=True,
                       why=["P2: still rising at the cap" if k in failing else "" for k in keys])


def test_the_scaling_claims_decide_each_size_as_table1_and_the_trend_on_its_slopes() -> None:
    gap = {"small": 1.0, "medium": 2.0, "large": 4.0}  # mixed's advantage: +1 point a doubling
    points = _points(gap, catch_up={"small": 0.0, "medium": 2.0, "large": 6.0})  # disjoint's deficit: -2 points a doubling
    status = claims.scaling_claims(points, _evidence(points), MACS)
    per_size = status[status["key"] == claims.MIXED_BEATS_JOINT_HIGH.key]
    assert per_size["compared"].map(lambda c: c.row).tolist() == list(gap)
    alone = claims.table1_claims(points[points["row"] == "small"], _evidence(points[points["row"] == "small"]))
    ours = per_size.iloc[0]
    theirs = alone[alone["key"] == claims.MIXED_BEATS_JOINT_HIGH.key].iloc[0]
    assert (ours["ci_low"], ours["ci_high"], ours["verdict"]) == (theirs["ci_low"], theirs["ci_high"], theirs["verdict"])  # one effect, one verdict
    trend = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    assert trend["effect"] == pytest.approx(1.0) and trend["seeds"] == 5 and trend["verdict"] == "held"
    assert trend["unit"] == "points per doubling of MACs" and trend["scale"] == "small to large (3 sizes)"
    shrinking = status[status["key"] == claims.DISJOINT_DEFICIT_GROWS.key].iloc[0]
    assert shrinking["effect"] == pytest.approx(-2.0) and shrinking["verdict"] == "not held"  # it shrinks


def test_a_trend_leaves_out_a_seed_whose_run_at_any_size_is_not_evidence() -> None:
    gap = {"small": 1.0, "medium": 2.0, "large": 4.0}
    points = _points(gap)
    one_out = claims.scaling_claims(points, _evidence(points, {("large", "joint", 3)}), MACS)
    trend = one_out[one_out["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    assert trend["seeds"] == 4 and trend["left_out"] == (3,) and "large: P2: still rising" in trend["why"]
    two_out = claims.scaling_claims(points, _evidence(points, {("large", "joint", 3), ("small", "mixed", 1)}), MACS)
    assert two_out[two_out["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]["verdict"] == claims.NOT_CONVERGED


def test_one_size_gives_no_trend() -> None:
    points = _points({"small": 1.0})
    status = claims.scaling_claims(points, _evidence(points), MACS)
    assert set(status.loc[status["key"].isin([c.key for c in claims.SCALING_CLAIMS]), "verdict"]) == {claims.NO_INTERVAL}


def test_the_plotted_effects_are_those_the_trends_are_fitted_to() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    frame = claims.scaled_effects(points, MACS)
    assert len(frame) == 2 * 3 * 5 and frame["claim"].unique().tolist() == [c.statement for c in claims.SCALING_CLAIMS]
    assert frame["family"].unique().tolist() == ["small to large (3 sizes)"]
    mixed = frame[frame["claim"] == claims.MIXED_ADVANTAGE_GROWS.statement]
    assert mixed.groupby("row", sort=False)["effect"].mean().tolist() == pytest.approx([1.2, 2.2, 4.2])  # gap + 0.1 x mean seed
    from mexit.plots import trend_against_size

    ax = trend_against_size(mixed)
    assert ax.get_xscale() == "log" and len(ax.get_lines()) >= 5  # a line a seed, and the fitted mean


def test_a_trend_is_cited_with_its_interval_unit_verdict_and_seeds() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    status = claims.scaling_claims(points, _evidence(points), MACS)
    trend = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    assert claims.claim_sentence(trend) == f"1.0 [{trend['ci_low']:.1f}, {trend['ci_high']:.1f}] points per doubling of MACs: held, on 5 seeds"
    one = claims.scaling_claims(points[points["row"] == "small"], _evidence(points[points["row"] == "small"]), MACS)
    assert claims.claim_sentence(one[one["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]) == claims.NO_INTERVAL


def test_each_family_gets_its_own_trend() -> None:
    cnn = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    vit = _points({"vit-s": 4.0, "vit-b": 3.0}).assign(seed=lambda f: f["seed"])  # shrinks: -1 a doubling
    points = pd.concat([cnn, vit], ignore_index=True)
    macs = {**MACS, "vit-s": 100e6, "vit-b": 200e6}
    families = [["small", "medium", "large"], ["vit-s", "vit-b"]]
    status = claims.scaling_claims(points, _evidence(points), macs, families)
    trends = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].set_index("scale")
    assert trends.loc["small to large (3 sizes)", "effect"] == pytest.approx(1.0)
    assert trends.loc["vit-s to vit-b (2 sizes)", "effect"] == pytest.approx(-1.0)
    assert (status["key"] == claims.MIXED_BEATS_JOINT_HIGH.key).sum() == 5  # every size, once
    assert claims.scaled_effects(points, macs, families)["family"].nunique() == 2
    with pytest.raises(ValueError, match="lack"):
        claims.scaling_claims(points, _evidence(points), macs, [["small", "huge"]])
