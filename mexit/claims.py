"""The paper's claims as tests on measured effects: a verdict computed from a 95% CI, never typed.

A :class:`Claim` says what is claimed, where the claim comes from, how this book measures it and
which effect values confirm it. :func:`assess` turns the per-seed effects of one row into a verdict:

- ``"held"``: the whole 95% CI lies where the claim holds;
- ``"not held"``: the whole CI lies where it does not;
- ``"inconclusive"``: the CI straddles the boundary;
- ``"untested at this scale"``: fewer than two seeds, so no CI.

A claim holds where the effect is positive (``kind="positive"``: strictly above 0) or inside a
stated interval (``kind="within"``). Which effect and which interval are this book's reading of the
claim, stated in :attr:`Claim.measure` and shown on the status page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mexit.evaluate.cost import cost_ratio
from mexit.evaluate.stats import format_interval, mean_ci

VERDICTS: tuple[str, ...] = ("held", "not held", "inconclusive", "untested at this scale")
KINDS: tuple[str, ...] = ("positive", "within")


@dataclass(frozen=True)
class Claim:
    """One claim: ``key`` (a glue-safe name), the ``statement``, its ``source``, how it is measured,
    the effect's ``unit``, and where it holds (``kind`` with ``interval`` for ``"within"``)."""

    key: str
    statement: str
    source: str
    measure: str
    unit: str
    kind: str = "positive"
    interval: tuple[float, float] = (0.0, math.inf)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        low, high = self.interval
        if not low < high:
            raise ValueError(f"interval must have low < high, got {self.interval}")


def verdict(claim: Claim, low: float, high: float, n: int) -> str:
    """The verdict of ``claim`` given the 95% CI ``[low, high]`` of its effect over ``n`` seeds."""
    if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return "untested at this scale"
    if claim.kind == "positive":
        if low > 0:
            return "held"
        return "not held" if high < 0 else "inconclusive"
    lo, hi = claim.interval
    if lo <= low and high <= hi:
        return "held"
    return "not held" if high < lo or low > hi else "inconclusive"


def assess(claim: Claim, effects: Sequence[float], scale: str) -> dict[str, object]:
    """One status row: the claim, the ``scale`` it was tested at, the effect's mean and CI over
    the per-seed ``effects`` (NaN entries dropped), and the computed verdict."""
    values = [float(e) for e in effects if not math.isnan(float(e))]
    summary = mean_ci(values)
    return {
        "claim": claim.statement,
        "key": claim.key,
        "source": claim.source,
        "measure": claim.measure,
        "scale": scale,
        "seeds": summary["n"],
        "effect": summary["mean"],
        "ci_low": summary["low"],
        "ci_high": summary["high"],
        "unit": claim.unit,
        "verdict": verdict(claim, summary["low"], summary["high"], summary["n"]),
    }


def status_view(rows: pd.DataFrame, profile: str | None = None, digits: int = 1) -> pd.DataFrame:
    """The book's view of :func:`assess` rows: claim, source, profile, scale, seeds,
    "effect [low, high] unit", verdict (``profile`` None: "custom", parameters given by hand)."""
    def effect(row: pd.Series) -> str:
        text = format_interval(row["effect"], row["ci_low"], row["ci_high"], digits)
        if text == "–":
            return text
        return f"{text} {row['unit']}" + (" (no CI)" if math.isnan(row["ci_low"]) else "")

    return pd.DataFrame(
        {
            "claim": rows["claim"],
            "source": rows["source"],
            "profile": profile or "custom",
            "scale": rows["scale"],
            "seeds": rows["seeds"],
            "effect [95% CI]": rows.apply(effect, axis=1),
            "verdict": rows["verdict"],
        }
    ).set_index("claim")


def measures_view(rows: pd.DataFrame) -> pd.DataFrame:
    """How each claim of :func:`assess` rows is measured and where it holds, one row per claim."""
    def holds(row: pd.Series) -> str:
        claim = next(c for c in CLAIMS if c.key == row["key"])
        if claim.kind == "positive":
            return f"the CI lies above 0 {claim.unit}"
        return f"the CI lies within [{claim.interval[0]:g}, {claim.interval[1]:g}] {claim.unit}"

    unique = rows.drop_duplicates("key")
    return pd.DataFrame(
        {"claim": unique["claim"], "measured as": unique["measure"], "held when": unique.apply(holds, axis=1)}
    ).set_index("claim")


# --- the claims Table 1 and the training-cost page test -----------------------------------------

HIGH_BUDGETS: tuple[float, ...] = (0.75, 1.0)

MIXED_BEATS_JOINT_HIGH = Claim(
    "mixed_beats_joint_high",
    "Mixed is more accurate than joint at high budgets",
    "paper (Table 1)",
    "mixed - joint accuracy, mean of the 75% and 100% budgets, paired by seed",
    "points",
)
DISJOINT_WEAK_LOW = Claim(
    "disjoint_weak_low",
    "Disjoint is the weakest regime at low budgets",
    "paper (Table 1)",
    "the worse of joint and mixed - disjoint, accuracy at the lowest budget every run can meet "
    "(25% where the first exits allow it), paired by seed",
    "points",
)
MIXED_BEST = Claim(
    "mixed_best",
    "Mixed is the best regime overall",
    "paper (abstract)",
    "mixed - the better of disjoint and joint, accuracy averaged over the budgets every run can meet, "
    "paired by seed",
    "points",
)
MIXED_GAIN_1_3 = Claim(
    "mixed_gain_1_3",
    "Mixed is 1-3% more accurate at higher budgets",
    "seed summary",
    "mixed - the better of disjoint and joint, mean of the 75% and 100% budgets; held when the CI "
    "lies within [1, 3] points (our reading)",
    "points",
    kind="within",
    interval=(1.0, 3.0),
)
MIXED_TIME_27 = Claim(
    "mixed_time_27",
    "Mixed needs 27% less training time",
    "seed summary",
    "100 x (1 - wall time of mixed (P1 + P2) / wall time of joint (P2)), per seed; held when the CI "
    "lies within [17, 37]% (27 +- 10, our tolerance)",
    "%",
    kind="within",
    interval=(17.0, 37.0),
)
TABLE1_CLAIMS: tuple[Claim, ...] = (MIXED_BEATS_JOINT_HIGH, DISJOINT_WEAK_LOW, MIXED_BEST, MIXED_GAIN_1_3)
CLAIMS: tuple[Claim, ...] = (*TABLE1_CLAIMS, MIXED_TIME_27)


def table1_claims(points: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 claims per row, from :func:`mexit.evaluate.run_points` tagged ``row``,
    ``regime`` and ``seed``. Only budgets at which every run of the row has an operating point are
    used; the "low budget" is the lowest of them (25% where the first exits allow it). A claim whose
    regimes or budgets the points lack is untested."""
    rows = []
    for label, frame in points.groupby("row", sort=False):
        accuracy = frame.pivot_table(index="seed", columns=["regime", "budget"], values="accuracy", aggfunc="first", dropna=False)
        fits = frame.groupby("budget")["accuracy"].apply(lambda a: bool(a.notna().all()))
        usable = sorted(b for b, ok in fits.items() if ok)
        low = usable[:1]

        def at(regime: str, budgets: Sequence[float]) -> pd.Series:
            columns = [(regime, b) for b in budgets if (regime, b) in accuracy.columns]
            if not budgets or len(columns) != len(budgets):
                return pd.Series(dtype=float)
            return accuracy[columns].mean(axis=1, skipna=False)

        high = [b for b in HIGH_BUDGETS if b in usable]
        mixed_high, joint_high, disjoint_high = (at(r, high) for r in ("mixed", "joint", "disjoint"))
        mixed_all, joint_all, disjoint_all = (at(r, usable) for r in ("mixed", "joint", "disjoint"))
        worse_low = pd.concat([at("joint", low), at("mixed", low)], axis=1).min(axis=1, skipna=False)
        effects = {
            MIXED_BEATS_JOINT_HIGH: (mixed_high - joint_high, high),
            DISJOINT_WEAK_LOW: (worse_low - at("disjoint", low), low),
            MIXED_BEST: (mixed_all - pd.concat([joint_all, disjoint_all], axis=1).max(axis=1, skipna=False), usable),
            MIXED_GAIN_1_3: (mixed_high - pd.concat([joint_high, disjoint_high], axis=1).max(axis=1, skipna=False), high),
        }
        for claim, (effect, budgets) in effects.items():
            where = f"{label} (budgets {', '.join(f'{100 * b:g}%' for b in budgets)})" if budgets else label
            rows.append(assess(claim, effect.dropna().tolist(), where))
    return pd.DataFrame(rows)


def time_claims(costs: pd.DataFrame) -> pd.DataFrame:
    """The training-time claim per row, from :func:`mexit.evaluate.regime_cost` (each regime charged
    its own phases, P1 included)."""
    rows = []
    for label, frame in costs.groupby("row", sort=False):
        saving = 100 * (1 - cost_ratio(frame, "mixed", "joint"))
        rows.append(assess(MIXED_TIME_27, saving.tolist(), label))
    return pd.DataFrame(rows)
