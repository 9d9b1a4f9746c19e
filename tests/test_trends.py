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


SEEDS = (9, 2, 5, 7, 4)  # not 0..n-1, not sorted: seeds pair by their number, never by position


def _points(gap: dict[str, float], catch_up: dict[str, float] | None = None, seeds: tuple[int, ...] = SEEDS) -> pd.DataFrame:
    """Per size, seed and budget: joint 60, mixed 60 + the size's ``gap`` + 0.1 x seed + noise that
    differs by size, disjoint 50 + the size's ``catch_up`` + 0.05 x seed."""
    catch_up = catch_up or dict.fromkeys(gap, 0.0)
    noise = {size: np.random.default_rng(len(size)).normal(0, 0.3, max(seeds) + 1) for size in gap}

    def accuracy(size: str, regime: str, seed: int) -> float:
        if regime == "mixed":
            return 60.0 + gap[size] + 0.1 * seed + noise[size][seed]
        return 60.0 if regime == "joint" else 50.0 + catch_up[size] + 0.05 * seed

    rows = [
        {"row": size, "regime": regime, "seed": seed, "budget": budget, "accuracy": accuracy(size, regime, seed)}
        for size in gap for regime in ("disjoint", "joint", "mixed") for seed in seeds for budget in (0.25, 0.5, 0.75, 1.0)
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # no order to rely on


def _evidence(points: pd.DataFrame, failing: set[tuple[str, str, int]] = frozenset()) -> pd.DataFrame:
    runs = points[["row", "regime", "seed"]].drop_duplicates().reset_index(drop=True)
    keys = list(zip(runs["row"], runs["regime"], runs["seed"]))
    return runs.assign(evidence=[k not in failing for k in keys], early_stopped=True, learned=True,
                       why=["P2: still rising at the cap" if k in failing else "" for k in keys])


def _slopes(points: pd.DataFrame, sizes: list[str], macs: dict[str, float], regime: str = "mixed") -> pd.Series:
    """Per seed, numpy's least-squares slope of (``regime`` - joint at 75% and 100%) against log2 MACs."""
    high = points[points["budget"] >= 0.75].groupby(["row", "regime", "seed"])["accuracy"].mean()
    x = np.log2([macs[size] for size in sizes])
    return pd.Series({seed: np.polyfit(x, [high[(size, regime, seed)] - high[(size, "joint", seed)] for size in sizes], 1)[0] for seed in SEEDS})


def test_the_scaling_claims_decide_each_size_as_table1_and_the_trend_on_its_slopes() -> None:
    gap = {"medium": 2.0, "small": 1.0, "large": 4.0}  # mixed's advantage: about +1 point a doubling; listed out of order
    points = _points(gap, catch_up={"small": 0.0, "medium": 2.0, "large": 6.0})  # disjoint's deficit: -2 points a doubling
    status = claims.scaling_claims(points, _evidence(points), MACS)
    per_size = status[status["key"] == claims.MIXED_BEATS_JOINT_HIGH.key]
    assert sorted(per_size["compared"].map(lambda c: c.row)) == sorted(gap)
    small = points[points["row"] == "small"]
    alone = claims.table1_claims(small, _evidence(small))
    ours = per_size[per_size["compared"].map(lambda c: c.row) == "small"].iloc[0]
    theirs = alone[alone["key"] == claims.MIXED_BEATS_JOINT_HIGH.key].iloc[0]
    assert (ours["ci_low"], ours["ci_high"], ours["verdict"]) == (theirs["ci_low"], theirs["ci_high"], theirs["verdict"])  # one effect, one verdict
    trend = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    expected = _slopes(points, ["small", "medium", "large"], MACS)
    assert trend["scale"] == "small to large (3 sizes)"  # smallest first, whatever the rows' order
    assert trend["effect"] == pytest.approx(expected.mean()) and trend["seeds"] == 5 and sorted(trend["effect_seeds"]) == sorted(SEEDS)
    assert trend["ci_high"] - trend["ci_low"] > 0.05 and trend["verdict"] == "held"  # the noise gives the interval a width
    assert trend["unit"] == "points per doubling of MACs"
    shrinking = status[status["key"] == claims.DISJOINT_DEFICIT_GROWS.key].iloc[0]
    assert shrinking["effect"] == pytest.approx(-2.0) and shrinking["verdict"] == "not held"  # it shrinks


def test_a_trend_reads_every_size_at_the_budgets_all_of_them_can_meet() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0}, catch_up={"small": 0.0, "medium": 2.0, "large": 6.0})
    no_low = (points["row"] == "small") & (points["budget"] == 0.25)  # the small size's first exit costs more than 25%
    points.loc[no_low, "accuracy"] = np.nan
    points.loc[(points["row"] != "small") & (points["budget"] == 0.25) & (points["regime"] == "disjoint"), "accuracy"] -= 10.0
    status = claims.scaling_claims(points, _evidence(points), MACS)
    deficit = status[status["key"] == claims.DISJOINT_DEFICIT_GROWS.key].iloc[0]
    assert deficit["effect"] == pytest.approx(-2.0)  # at 50% for every size: the 25% points of the others are not read
    per_size = status[status["key"] == claims.DISJOINT_WEAK_LOW.key]
    per_size = per_size.set_index(per_size["compared"].map(lambda c: c.row))
    assert "25%" in per_size.loc["medium", "scale"] and "50%" in per_size.loc["small", "scale"]  # each size as Table 1 reads it


def test_a_trend_leaves_out_a_seed_whose_run_at_any_size_is_not_evidence() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    one_out = claims.scaling_claims(points, _evidence(points, {("large", "joint", 7)}), MACS)
    trend = one_out[one_out["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    assert trend["seeds"] == 4 and trend["left_out"] == (7,) and "large: P2: still rising" in trend["why"]
    assert trend["effect"] == pytest.approx(_slopes(points, ["small", "medium", "large"], MACS).drop(7).mean())
    two_out = claims.scaling_claims(points, _evidence(points, {("large", "joint", 7), ("small", "mixed", 2)}), MACS)
    assert two_out[two_out["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]["verdict"] == claims.NOT_CONVERGED


def test_one_size_or_one_cost_gives_no_trend() -> None:
    points = _points({"small": 1.0})
    status = claims.scaling_claims(points, _evidence(points), MACS)
    assert set(status.loc[status["key"].isin([c.key for c in claims.SCALING_CLAIMS]), "verdict"]) == {claims.NO_INTERVAL}
    twins = _points({"small": 1.0, "medium": 2.0})
    same = claims.scaling_claims(twins, _evidence(twins), {"small": 5.0, "medium": 5.0})
    assert set(same.loc[same["key"].isin([c.key for c in claims.SCALING_CLAIMS]), "verdict"]) == {claims.NO_INTERVAL}


def test_the_plotted_effects_give_the_trend_its_slope() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    status = claims.scaling_claims(points, _evidence(points, {("large", "joint", 7)}), MACS)
    frame = claims.scaled_effects(points, MACS, decided=status)
    assert frame["family"].unique().tolist() == ["small to large (3 sizes)"]
    assert frame["claim"].unique().tolist() == [c.statement for c in claims.SCALING_CLAIMS]
    mixed = frame[frame["claim"] == claims.MIXED_ADVANTAGE_GROWS.statement]
    assert sorted(mixed["seed"].unique()) == sorted(set(SEEDS) - {7})  # the seeds the claim was decided on
    trend = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    from mexit.plots import trend_against_size

    ax = trend_against_size(mixed)
    fitted = [line.get_label() for line in ax.get_lines() if line.get_label().startswith("fitted")]
    assert ax.get_xscale() == "log" and fitted == [f"fitted: {trend['effect']:+.2f} points a doubling"]
    assert len(claims.scaled_effects(points, MACS)) == 2 * 3 * 5  # without decided rows: every seed
    blocked = claims.scaling_claims(points, _evidence(points, {("large", "joint", 7), ("small", "mixed", 2)}), MACS)
    shown = claims.scaled_effects(points, MACS, decided=blocked)
    untested = shown[shown["claim"] == claims.MIXED_ADVANTAGE_GROWS.statement]
    assert len(untested) == 3 * 5 and not untested["decided"].any()  # every seed's effects shown, the trend untested
    labels = [line.get_label() for line in trend_against_size(untested).get_lines()]
    assert "trend untested: no line" in labels and not any(label.startswith("fitted") for label in labels)


def test_each_family_gets_its_own_trend() -> None:
    cnn = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    vit = _points({"vit-s": 4.0, "vit-b": 3.0})  # shrinks: about -1 a doubling
    points = pd.concat([cnn, vit], ignore_index=True)
    macs = {**MACS, "vit-s": 100e6, "vit-b": 200e6}
    families = [["large", "small", "medium"], ["vit-b", "vit-s"]]
    status = claims.scaling_claims(points, _evidence(points), macs, families)
    trends = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].set_index("scale")
    assert trends.loc["small to large (3 sizes)", "effect"] == pytest.approx(_slopes(cnn, ["small", "medium", "large"], MACS).mean())
    assert trends.loc["vit-s to vit-b (2 sizes)", "effect"] == pytest.approx(_slopes(vit, ["vit-s", "vit-b"], macs).mean())
    assert (status["key"] == claims.MIXED_BEATS_JOINT_HIGH.key).sum() == 5  # every size, once
    assert claims.scaled_effects(points, macs, families)["family"].nunique() == 2
    with pytest.raises(ValueError, match="lack"):
        claims.scaling_claims(points, _evidence(points), macs, [["small", "huge"]])


def test_a_trend_is_cited_with_its_interval_unit_verdict_and_seeds() -> None:
    points = _points({"small": 1.0, "medium": 2.0, "large": 4.0})
    status = claims.scaling_claims(points, _evidence(points), MACS)
    trend = status[status["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]
    assert claims.claim_sentence(trend) == (
        f"{trend['effect']:.1f} [{trend['ci_low']:.1f}, {trend['ci_high']:.1f}] points per doubling of MACs: held, on 5 seeds"
    )
    blocked = claims.scaling_claims(points, _evidence(points, {("large", "joint", 7), ("small", "mixed", 2)}), MACS)
    assert claims.claim_sentence(blocked[blocked["key"] == claims.MIXED_ADVANTAGE_GROWS.key].iloc[0]) == claims.NOT_CONVERGED
