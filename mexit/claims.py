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
        low, high = claim.interval
        if math.isinf(low):
            return f"the CI lies below {high:g} {claim.unit}"
        if math.isinf(high):
            return f"the CI lies above {low:g} {claim.unit}"
        return f"the CI lies within [{low:g}, {high:g}] {claim.unit}"

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

# --- the claims the analysis pages test ----------------------------------------------------------

JOINT_ICS_DOMINATE_MIDDLE = Claim(
    "joint_ics_dominate_middle",
    "In joint training, the ICs' gradients dominate the middle of the network",
    "paper (gradient dominance)",
    "joint at the end of P2: the largest IC's gradient share minus the final head's, in % of the "
    "block's gradient, mean over the middle third of the blocks, per seed (our reading)",
    "% of the gradient",
)
MIXED_DEEPER_DOMINATE = Claim(
    "mixed_deeper_dominate",
    "In mixed training, deeper classifiers dominate the backbone's gradient",
    "paper (gradient dominance)",
    "mixed - joint at the end of P2: the share-weighted mean depth of the exits driving the middle "
    "third of the blocks, in % of the backbone's depth, paired by seed (our reading)",
    "% depth",
)
DISJOINT_MIXED_ONE_BASIN = Claim(
    "disjoint_mixed_one_basin",
    "Disjoint and mixed solutions lie in one basin",
    "paper (Figure 3)",
    "the final exit's test-error barrier on the linear path between disjoint and mixed (BatchNorm "
    "recomputed), per seed; held when the CI lies below 2 points (Frankle et al.'s criterion)",
    "points",
    kind="within",
    interval=(-math.inf, 2.0),
)
JOINT_OTHER_BASIN = Claim(
    "joint_other_basin",
    "Joint's solution lies in another basin than mixed's",
    "paper (Figure 3)",
    "the final exit's test-error barrier on the linear path between joint and mixed, per seed; held "
    "when the CI lies above 2 points (Frankle et al.'s criterion)",
    "points",
    kind="within",
    interval=(2.0, math.inf),
)
RANK_EARLY_HIGHER = Claim(
    "rank_early_higher",
    "Mixed's early representations have a higher numerical rank than joint's",
    "paper (numerical rank)",
    "mixed - joint numerical rank in % of the rank measurable, mean over the first third of the "
    "blocks, paired by seed",
    "% of max rank",
)
RANK_DEEP_LOWER = Claim(
    "rank_deep_lower",
    "Mixed's deep representations have a lower numerical rank than joint's",
    "paper (numerical rank)",
    "joint - mixed numerical rank in % of the rank measurable, mean over the last third of the "
    "blocks, paired by seed",
    "% of max rank",
)
MIXED_DEEP_LABEL_INFORMATION = Claim(
    "mixed_deep_label_information",
    "Mixed's deep representations carry more information about the labels than joint's",
    "ours (the paper's mutual-information finding is not in our sources; read from Table 1)",
    "mixed - joint I(Z;Y) lower bound (linear probe), mean over the last third of the blocks, "
    "paired by seed",
    "bits",
)
ANALYSIS_CLAIMS: tuple[Claim, ...] = (
    JOINT_ICS_DOMINATE_MIDDLE,
    MIXED_DEEPER_DOMINATE,
    DISJOINT_MIXED_ONE_BASIN,
    JOINT_OTHER_BASIN,
    RANK_EARLY_HIGHER,
    RANK_DEEP_LOWER,
    MIXED_DEEP_LABEL_INFORMATION,
)

# --- the claims the ablation pages test ----------------------------------------------------------

MIXED_AHEAD = Claim(
    "mixed_ahead",
    "Mixed stays ahead of the other regimes under the ablation's change",
    "paper (ablations)",
    "per variant: mixed - the best other regime the variant trains, accuracy averaged over the "
    "budgets every run of the variant can meet, paired by seed",
    "points",
)
SCALING_UNNEEDED_WITH_MIXED = Claim(
    "scaling_unneeded_with_mixed",
    "Mixed training makes loss scaling and gradient equilibrium unnecessary",
    "paper (loss scaling, gradient equilibrium)",
    "per scaling variant: mixed with it - mixed with the uniform loss (the page's first variant), "
    "accuracy averaged over the budgets both meet, paired by seed; held when the CI lies below 1 "
    "point (no gain worth having; our tolerance)",
    "points",
    kind="within",
    interval=(-math.inf, 1.0),
)
LARGER_ICS_HELP_DISJOINT = Claim(
    "larger_ics_help_disjoint",
    "Larger ICs improve the disjoint regime",
    "seed summary (IC size)",
    "per head: disjoint with it - disjoint with the page's first head (the smallest), accuracy "
    "averaged over the budgets both meet, paired by seed",
    "points",
)
SPLIT_BEATS_JOINT = Claim(
    "split_beats_joint",
    "Spending part of a fixed epoch budget on the backbone alone beats joint training",
    "ours (the paper's phase-split ablation; its finding is not in our sources)",
    "per split: mixed with that P1:P2 split - joint with all epochs in P2, accuracy averaged over "
    "the budgets both meet, paired by seed",
    "points",
)
ABLATION_CLAIMS: tuple[Claim, ...] = (MIXED_AHEAD, SCALING_UNNEEDED_WITH_MIXED, LARGER_ICS_HELP_DISJOINT, SPLIT_BEATS_JOINT)
CLAIMS: tuple[Claim, ...] = (*TABLE1_CLAIMS, MIXED_TIME_27, *ANALYSIS_CLAIMS, *ABLATION_CLAIMS)


def table1_claims(points: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 claims per row, from :func:`mexit.evaluate.run_points` tagged ``row``,
    ``regime`` and ``seed``. Only budgets at which every run of the row has an operating point are
    used; the "low budget" is the lowest of them (25% where the first exits allow it). A claim whose
    regimes or budgets the points lack is untested."""
    rows = []
    for label, frame in points.groupby("row", sort=False):
        accuracy = frame.pivot_table(index="seed", columns=["regime", "budget"], values="accuracy", aggfunc="first", dropna=False)
        usable = _usable(frame)
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
            rows.append(assess(claim, effect.dropna().tolist(), _where(label, budgets)))
    return pd.DataFrame(rows)


def time_claims(costs: pd.DataFrame) -> pd.DataFrame:
    """The training-time claim per row, from :func:`mexit.evaluate.regime_cost` (each regime charged
    its own phases, P1 included)."""
    rows = []
    for label, frame in costs.groupby("row", sort=False):
        saving = 100 * (1 - cost_ratio(frame, "mixed", "joint"))
        rows.append(assess(MIXED_TIME_27, saving.tolist(), label))
    return pd.DataFrame(rows)


def pair_label(a: str, b: str) -> str:
    """How a pair of regimes is named in the connectivity tables: ``"joint–mixed"`` (an en dash)."""
    return f"{a}–{b}"


def depth_thirds(blocks: int) -> tuple[list[int], list[int], list[int]]:
    """The early, middle and deep blocks (1-based) of a backbone of ``blocks`` blocks: block ``l``
    is early when ``l <= blocks / 3``, deep when ``l > 2 blocks / 3``, else middle."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    early = [b for b in range(1, blocks + 1) if b <= blocks / 3]
    deep = [b for b in range(1, blocks + 1) if b > 2 * blocks / 3]
    middle = [b for b in range(1, blocks + 1) if b not in early and b not in deep]
    return early, middle, deep


def _per_seed(frame: pd.DataFrame, regime: str, value: str) -> pd.Series:
    """``value`` averaged per seed over the rows of ``regime`` (an empty series without them)."""
    return frame[frame["regime"] == regime].groupby("seed")[value].mean()


def dominance_claims(end: pd.DataFrame) -> pd.DataFrame:
    """The gradient-dominance claims per row, from the probes at the end of P2
    (:func:`mexit.analysis.runs.dominance_at`), tagged ``row``, ``regime`` and ``seed``."""
    rows = []
    for label, frame in end.groupby("row", sort=False):
        blocks = int(frame["exit_block"].max())
        middle = frame[frame["block"].isin(depth_thirds(blocks)[1])]
        final = middle["exit_block"] == blocks
        per_block = middle.groupby(["regime", "seed", "block"])
        ic_top = middle[~final].groupby(["regime", "seed", "block"])["share"].max()
        final_share = middle[final].set_index(["regime", "seed", "block"])["share"]
        lead = (100 * (ic_top - final_share)).rename("lead").reset_index()
        depth = (middle["share"] * middle["exit_block"] / blocks * 100).groupby([middle["regime"], middle["seed"], middle["block"]]).sum()
        depth = (depth / per_block["share"].sum()).rename("depth").reset_index()
        where = f"{label} (blocks {', '.join(map(str, depth_thirds(blocks)[1]))} of {blocks})"
        rows.append(assess(JOINT_ICS_DOMINATE_MIDDLE, _per_seed(lead, "joint", "lead").tolist(), where))
        shift = _per_seed(depth, "mixed", "depth") - _per_seed(depth, "joint", "depth")
        rows.append(assess(MIXED_DEEPER_DOMINATE, shift.dropna().tolist(), where))
    return pd.DataFrame(rows)


def connectivity_claims(barriers: pd.DataFrame) -> pd.DataFrame:
    """The basin claims per row, from the linear paths' :func:`mexit.analysis.runs.barrier_table`
    (the final exit's error barrier)."""
    rows = []
    for label, frame in barriers[barriers["path"] == "linear"].groupby("row", sort=False):
        final = frame[frame["exit"] == frame["exit"].max()]
        for claim, pair in ((DISJOINT_MIXED_ONE_BASIN, ("disjoint", "mixed")), (JOINT_OTHER_BASIN, ("joint", "mixed"))):
            rows.append(assess(claim, final[final["pair"] == pair_label(*pair)]["error_barrier"].tolist(), label))
    return pd.DataFrame(rows)


def rank_claims(ranks: pd.DataFrame) -> pd.DataFrame:
    """The numerical-rank claims per row, from :func:`mexit.analysis.runs.rank_table` (its
    ``rank_pct``: the rank in % of the largest measurable)."""
    rows = []
    for label, frame in ranks.groupby("row", sort=False):
        early, _, deep = depth_thirds(int(frame["block"].max()))
        for claim, blocks, sign in ((RANK_EARLY_HIGHER, early, 1), (RANK_DEEP_LOWER, deep, -1)):
            part = frame[frame["block"].isin(blocks)]
            effect = sign * (_per_seed(part, "mixed", "rank_pct") - _per_seed(part, "joint", "rank_pct"))
            where = f"{label} (blocks {', '.join(map(str, blocks))})"
            rows.append(assess(claim, effect.dropna().tolist(), where))
    return pd.DataFrame(rows)


def information_claims(information: pd.DataFrame) -> pd.DataFrame:
    """The mutual-information claim per row, from :func:`mexit.analysis.runs.information_table`."""
    rows = []
    for label, frame in information.groupby("row", sort=False):
        deep = depth_thirds(int(frame["block"].max()))[2]
        part = frame[frame["block"].isin(deep)]
        effect = _per_seed(part, "mixed", "label_bits") - _per_seed(part, "joint", "label_bits")
        where = f"{label} (blocks {', '.join(map(str, deep))})"
        rows.append(assess(MIXED_DEEP_LABEL_INFORMATION, effect.dropna().tolist(), where))
    return pd.DataFrame(rows)


def ablation_claims(points: pd.DataFrame, change: tuple[Claim, str, str] | None = None) -> pd.DataFrame:
    """The ablation claims from :func:`mexit.evaluate.run_points` of a study with variants (tagged
    ``row``, ``variant``, ``regime``, ``seed``): :data:`MIXED_AHEAD` per row and variant that trains
    mixed and another regime; with ``change = (claim, regime, reference_regime)``, that claim per
    row and per variant after the row's first (the reference): ``regime``'s accuracy with the
    variant minus ``reference_regime``'s with the reference. Accuracy is averaged over the budgets
    at which every run compared has a point; pairs are matched by seed."""
    rows = []
    for (label, variant), frame in points.groupby(["row", "variant"], sort=False):
        regimes = list(pd.unique(frame["regime"]))
        if "mixed" not in regimes or len(regimes) < 2:
            continue
        budgets = _usable(frame)
        others = pd.concat([_budget_mean(frame, r, budgets) for r in regimes if r != "mixed"], axis=1).max(axis=1, skipna=False)
        effect = _budget_mean(frame, "mixed", budgets) - others
        rows.append(assess(MIXED_AHEAD, effect.dropna().tolist(), _where(f"{label}, {variant}", budgets)))
    if change is not None:
        claim, regime, reference_regime = change
        for label, frame in points.groupby("row", sort=False):
            variants = list(pd.unique(frame["variant"]))
            reference = frame[(frame["variant"] == variants[0]) & (frame["regime"] == reference_regime)]
            for variant in variants[1:]:
                changed = frame[(frame["variant"] == variant) & (frame["regime"] == regime)]
                if reference.empty or changed.empty:
                    continue
                budgets = _usable(pd.concat([reference, changed]))
                effect = _budget_mean(changed, regime, budgets) - _budget_mean(reference, reference_regime, budgets)
                where = _where(f"{label}, {regime} with {variant} vs {reference_regime} with {variants[0]}", budgets)
                rows.append(assess(claim, effect.dropna().tolist(), where))
    return pd.DataFrame(rows, columns=list(assess(MIXED_AHEAD, [], "").keys()))


def _usable(points: pd.DataFrame) -> list[float]:
    """The budgets at which every run of ``points`` has an operating point."""
    fits = points.groupby("budget")["accuracy"].apply(lambda a: bool(a.notna().all()))
    return sorted(float(b) for b, ok in fits.items() if ok)


def _budget_mean(points: pd.DataFrame, regime: str, budgets: Sequence[float]) -> pd.Series:
    """``regime``'s accuracy averaged over ``budgets``, per seed (empty without budgets)."""
    if not budgets:
        return pd.Series(dtype=float)
    part = points[(points["regime"] == regime) & points["budget"].isin(budgets)]
    return part.groupby("seed")["accuracy"].mean()


def _where(what: str, budgets: Sequence[float]) -> str:
    return f"{what} (budgets {', '.join(f'{100 * b:g}%' for b in budgets)})" if budgets else what
