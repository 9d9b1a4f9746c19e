"""The paper's claims as tests on measured effects: a verdict computed from a CI, never typed.

A :class:`Claim` says what is claimed, where the claim comes from, how this book measures it and
which effect values confirm it. Each page's ``*_claims`` function measures its claims' per-seed
effects (:func:`assess`, which also records which runs each effect compares) and :func:`decide`
turns them into verdicts, checking first that the compared runs are evidence
(:mod:`mexit.evaluate.evidence`):

- ``"untested: not converged"``: a run compared did not converge (a phase still rising at its
  epoch cap, or no curve to tell) or learned nothing (its exits at chance), so the effect measures
  truncation or noise, not the regimes;
- ``"untested: phases ended at the cap"``: a claim about training time (``needs="early_stopping"``)
  on runs whose phases ran to their epoch caps: their time measures the caps;
- ``"untested: not learned"`` and ``"untested: stopped before the budget"``: a reading at a stated
  training budget (``needs="learned"``) on runs at chance, or on runs whose phases early stopping
  ended before their stated epochs: those runs did not train the budget the reading names;
- ``"untested at this scale"``: fewer than two seeds, so no interval;
- otherwise the interval decides: ``"held"`` when it lies wholly where the claim holds,
  ``"not held"`` when it lies wholly where it does not, ``"inconclusive"`` when it straddles.

A claim is decided on the seeds whose runs are evidence: where some seeds' runs are not, the
claim is decided on the remaining paired seeds when at least :func:`seeds_needed` of them remain
(four of five), the left-out seeds named with why; below that it is untested.

Families are book-wide, not per page (:data:`FAMILIES`): every claim belongs to one group of the
catalogue (Table 1's, the analyses', the ablations', ...), and its interval is a t-interval at
``1 - 0.05 / m``, ``m`` the number of claims in its group, simultaneous over one row's claims of
that group (Bonferroni). The level depends on the claim only, never on how many claims a page
happens to decide, so the same effect on the same runs gets the same interval and verdict on every
page that shows it. A claim holds where the effect
is positive (``kind="positive"``: strictly above 0) or inside a stated interval (``kind="within"``).
Which effect and which interval are this book's reading of the claim, stated in
:attr:`Claim.measure` and shown on the status page.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mexit.evaluate.cost import cost_ratio
from mexit.evaluate.evidence import AT_CHANCE, NEEDS, STOPPED_EARLY, at_stated_budget
from mexit.evaluate.stats import format_interval, mean_ci

NOT_CONVERGED = "untested: not converged"
AT_THE_CAP = "untested: phases ended at the cap"
NO_INTERVAL = "untested at this scale"
NOT_LEARNED = "untested: not learned"
SHORT_OF_BUDGET = "untested: stopped before the budget"
UNTESTED: tuple[str, ...] = (NO_INTERVAL, NOT_CONVERGED, AT_THE_CAP, NOT_LEARNED, SHORT_OF_BUDGET)
"""The verdicts of a claim that no interval decided."""
NOT_EVIDENCE: tuple[str, ...] = (NOT_CONVERGED, AT_THE_CAP, NOT_LEARNED, SHORT_OF_BUDGET)
"""The untested verdicts of a claim whose runs are not evidence (all but :data:`NO_INTERVAL`, one
seed's evidence): no view prints an effect for them (:func:`effect_text`)."""
VERDICTS: tuple[str, ...] = ("held", "not held", "inconclusive", *UNTESTED)
KINDS: tuple[str, ...] = ("positive", "within")
READINGS: dict[str, str] = {
    "convergence": "at convergence",
    "early_stopping": "until early stopping",
    "learned": "at an equal training budget",
}
"""What a verdict reads, by what its claim's runs need (:attr:`Claim.needs`): runs trained until
early stopping ended every phase, or runs trained an equal, stated number of epochs."""
FAMILY_LEVEL = 0.95
"""The confidence that every verdict of one row's claims of one family holds at once."""
MIN_SEED_SHARE = 0.8
"""The share of a claim's seeds whose runs must be evidence for the claim to be decided on them."""


def seeds_needed(seeds: int) -> int:
    """How many of ``seeds`` paired seeds must be evidence to decide a claim: :data:`MIN_SEED_SHARE`
    of them, rounded up, and at least two (an interval): 4 of 5, 3 of 3, 8 of 10."""
    return max(2, math.ceil(MIN_SEED_SHARE * seeds - 1e-9))


@dataclass(frozen=True)
class Claim:
    """One claim: ``key`` (a glue-safe name), the ``statement``, its ``source``, how it is measured,
    the effect's ``unit``, where it holds (``kind`` with ``interval`` for ``"within"``) and what its
    runs must show to be evidence (``needs``: converged runs, phases that early stopping ended, or,
    for a reading at a stated training budget, only runs that learned)."""

    key: str
    statement: str
    source: str
    measure: str
    unit: str
    kind: str = "positive"
    interval: tuple[float, float] = (0.0, math.inf)
    needs: str = "convergence"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.needs not in NEEDS:
            raise ValueError(f"needs must be one of {NEEDS}, got {self.needs!r}")
        low, high = self.interval
        if not low < high:
            raise ValueError(f"interval must have low < high, got {self.interval}")


@dataclass(frozen=True)
class Compared:
    """The runs an effect compares: those of ``row`` in ``regimes`` (and, in an ablation, of these
    ``variants``), every seed."""

    row: str
    regimes: tuple[str, ...]
    variants: tuple[str, ...] | None = None


def verdict(claim: Claim, low: float, high: float, n: int) -> str:
    """The verdict of ``claim`` on evidence runs, given the interval ``[low, high]`` of its effect over ``n`` seeds."""
    if n < 2 or not (math.isfinite(low) and math.isfinite(high)):
        return NO_INTERVAL
    if claim.kind == "positive":
        if low > 0:
            return "held"
        return "not held" if high < 0 else "inconclusive"
    lo, hi = claim.interval
    if lo <= low and high <= hi:
        return "held"
    return "not held" if high < lo or low > hi else "inconclusive"


def assess(claim: Claim, effects: pd.Series | Sequence[float], scale: str, compared: Compared) -> dict[str, object]:
    """One claim's measurement, not yet decided: the claim, the ``scale`` it was tested at, the
    per-seed ``effects`` (a series indexed by seed, NaN entries dropped; a plain sequence carries no
    seeds, so no seed of it can be left out) and the runs they ``compared``. :func:`decide` turns
    a page's measurements into verdicts."""
    if isinstance(effects, pd.Series):
        kept = effects.dropna()
        values, seeds = tuple(float(e) for e in kept), tuple(int(s) for s in kept.index)
    else:
        values, seeds = tuple(float(e) for e in effects if not math.isnan(float(e))), None
    return {
        "claim": claim.statement,
        "key": claim.key,
        "source": claim.source,
        "measure": claim.measure,
        "scale": scale,
        "unit": claim.unit,
        "effects": values,
        "effect_seeds": seeds,
        "compared": compared,
    }


DECIDED_COLUMNS: tuple[str, ...] = (
    "claim", "key", "source", "measure", "scale", "unit", "effects", "effect_seeds", "compared",
    "seeds", "left_out", "effect", "ci_low", "ci_high", "ci_level", "family", "verdict", "why",
)


def decide(measured: Sequence[dict[str, object]], evidence: pd.DataFrame, level: float = FAMILY_LEVEL) -> pd.DataFrame:
    """Verdicts for measurements (:func:`assess` rows), given ``evidence``:
    :meth:`mexit.study.Study.evidence`'s per-run table (``row``, ``regime``, ``seed``, ``evidence``,
    ``early_stopped``, ``why``; ``variant`` in an ablation).

    Seeds whose compared runs are not evidence are left out (``left_out``, named in ``why``); a claim
    with fewer than :func:`seeds_needed` evidence seeds left is untested (the module's docstring).
    The others are decided on t-intervals at ``1 - (1 - level) / m``, ``m`` the size of the claim's
    book-wide family (:func:`family_of`; ``family``, ``ci_level``)."""
    missing = [c for c in ("row", "regime", "seed", "evidence", "early_stopped", "why") if c not in evidence.columns]
    if missing:
        raise ValueError(f"evidence lacks columns {missing}; it has {list(evidence.columns)} (use Study.evidence())")
    decided = []
    for item in measured:
        claim = _claim(str(item["key"]))
        name, size = family_of(claim)
        each = 1 - (1 - level) / size
        blocked, why, effects, left_out = _evidence_seeds(claim, item, evidence)
        summary = mean_ci(list(effects), level=each)
        decided.append({**item, "seeds": summary["n"], "left_out": left_out, "effect": summary["mean"],
                        "ci_low": summary["low"], "ci_high": summary["high"], "ci_level": each,
                        "family": f"{name} ({size} claims a row)", "why": why,
                        "verdict": blocked or verdict(claim, summary["low"], summary["high"], summary["n"])})
    return pd.DataFrame(decided, columns=list(DECIDED_COLUMNS))


def _evidence_seeds(
    claim: Claim, item: dict[str, object], evidence: pd.DataFrame
) -> tuple[str | None, str, tuple[float, ...], tuple[int, ...]]:
    """``(untested verdict or None, why, the effects decided on, the seeds left out)`` of one measurement."""
    effects: tuple[float, ...] = item["effects"]  # type: ignore[assignment]
    seeds: tuple[int, ...] | None = item.get("effect_seeds")  # type: ignore[assignment]
    blocked, why, failing = _blocked(claim, item["compared"], evidence, seeds)  # type: ignore[arg-type]
    if blocked is None:
        return None, "", effects, ()
    if seeds is None or not failing:
        return blocked, why, effects, ()
    kept = [(e, s) for e, s in zip(effects, seeds, strict=True) if s not in failing]
    left_out = tuple(sorted(s for s in set(seeds) if s in failing))
    named = ", ".join(f"s{s}" for s in left_out)
    total = len(seeds)
    if len(kept) < seeds_needed(total):
        return blocked, f"{len(kept)} of {total} seeds are evidence, fewer than the {seeds_needed(total)} a verdict needs; {why}", effects, left_out
    return None, f"decided on {len(kept)} of {total} seeds, {named} left out: {why}", tuple(e for e, _ in kept), left_out


def reading_of(key: str) -> str:
    """The reading a claim's verdict is (:data:`READINGS`): at convergence, until early stopping or
    at an equal training budget, from its key."""
    return READINGS[_claim(key).needs]


def claim_needs(key: str) -> str:
    """What the runs of the claim ``key`` must show to be evidence (:attr:`Claim.needs`)."""
    return _claim(key).needs


def _claim(key: str) -> Claim:
    for claim in CLAIMS:
        if claim.key == key:
            return claim
    raise ValueError(f"unknown claim key {key!r}; known: {', '.join(c.key for c in CLAIMS)}")


def family_of(claim: Claim) -> tuple[str, int]:
    """The book-wide family ``claim`` is decided in (:data:`FAMILIES`): its name and its size."""
    for name, members in FAMILIES.items():
        if claim in members:
            return name, len(members)
    raise ValueError(f"claim {claim.key!r} is in no family of {list(FAMILIES)}")


def _blocked(
    claim: Claim, compared: Compared, evidence: pd.DataFrame, seeds: Sequence[int] | None = None
) -> tuple[str | None, str, frozenset[int]]:
    """The untested verdict the compared runs force (None: they are evidence), why, and the seeds of
    the failing runs; ``seeds``: the seeds the effect was measured on (None: every seed's runs count)."""
    of_row = evidence[evidence["row"] == compared.row]
    if of_row.empty:
        raise ValueError(f"evidence holds no run of row {compared.row!r}: build it from the same study as the effects")
    runs = of_row[of_row["regime"].isin(compared.regimes)]
    if seeds is not None:  # a seed the effect does not measure (not timed, no operating point) cannot block it
        runs = runs[runs["seed"].isin(seeds)]
    if compared.variants is not None:
        runs = runs[runs["variant"].isin(compared.variants)] if "variant" in runs.columns else runs.iloc[:0]
    if runs.empty:  # no run of these regimes: the effect is empty too, and untested at this scale
        return None, "", frozenset()

    def reasons(failing: pd.DataFrame, what: str) -> str:
        """The failing runs grouped by why, then per regime how many of its runs fail:
        "2 of 6 runs: joint s0, joint s1: P2: still rising ...; joint 2 of 3, mixed 0 of 3"."""
        named = "; ".join(
            ", ".join(f"{r.regime}{f' [{r.variant}]' if compared.variants else ''} s{int(r.seed)}" for r in group.itertuples())
            + f": {what or why}"
            for why, group in failing.groupby("why", sort=False)
        )
        per_regime = ", ".join(
            f"{regime} {int(failing['regime'].eq(regime).sum())} of {int(runs['regime'].eq(regime).sum())}"
            for regime in pd.unique(runs["regime"])
        )
        return f"{len(failing)} of {len(runs)} runs: {named} (not evidence per regime: {per_regime})"

    if claim.needs == "learned":  # a reading at a stated training budget: convergence is not asked
        at_stated_budget(runs)  # the columns it needs, or a ValueError naming them
        checks = [(NOT_LEARNED, ~runs["learned"].astype(bool), AT_CHANCE),
                  (SHORT_OF_BUDGET, ~runs["full_budget"].astype(bool), STOPPED_EARLY)]
    else:
        checks = [(NOT_CONVERGED, ~runs["evidence"].astype(bool), "")]
        if claim.needs == "early_stopping":
            checks.append((AT_THE_CAP, ~runs["early_stopped"].astype(bool), "a phase ran to its epoch cap"))
    # every check's failing runs are left out, not only the first check's, each named once (by the
    # first check it fails); the verdict is the first failing check's
    failed: list[tuple[str, pd.DataFrame, str]] = []
    named = pd.Series(False, index=runs.index)
    for verdict_, mask, what in checks:
        if (mask & ~named).any():
            failed.append((verdict_, runs[mask & ~named], what))
            named |= mask
    if not failed:
        return None, "", frozenset()
    seeds = frozenset(int(s) for _, failing, _ in failed for s in failing["seed"])
    return failed[0][0], "; ".join(reasons(failing, what) for _, failing, what in failed), seeds


def status_view(rows: pd.DataFrame, profile: str | None = None, digits: int = 1) -> pd.DataFrame:
    """The book's view of :func:`decide` rows, narrow enough for a page: claim (the index, its name
    saying the profile: ``profile`` None is "custom", parameters given by hand; the claim's statement
    without the reading it names), reading, source,
    scale, seeds, "effect [low, high] unit" and the level of that interval (simultaneous over the
    claim's family), verdict and, for an untested claim, why."""
    def effect(row: pd.Series) -> str:
        text = effect_text(row, digits)
        if text == "–":
            return text
        return f"{text} {row['unit']}" + (" (no CI)" if math.isnan(row["ci_low"]) else "")

    reading = rows["key"].map(reading_of)
    view = pd.DataFrame(
        {
            "claim": [claim.removesuffix(f", {r}") for claim, r in zip(rows["claim"], reading)],  # the reading has its column
            "reading": reading,
            "source": rows["source"],
            "scale": rows["scale"],
            "seeds": rows["seeds"],
            "effect [CI]": rows.apply(effect, axis=1),
            "CI level": rows["ci_level"].map(lambda v: f"{100 * v:.2f}%".replace(".00%", "%")),
            "verdict": rows["verdict"],
            "why untested": rows["why"].map(lambda w: w or "–"),
        }
    ).set_index("claim")
    view.index.name = f"claim ({profile or 'custom'} profile)"
    return view


def effect_text(row: pd.Series, digits: int = 1) -> str:
    """A :func:`decide` row's effect as every view prints it, "mean [low, high]" (:func:`format_interval`);
    "–" for a claim whose runs are not evidence (:data:`NOT_EVIDENCE`): an interval over them would
    read as a result."""
    if row["verdict"] in NOT_EVIDENCE:
        return "–"
    return format_interval(row["effect"], row["ci_low"], row["ci_high"], digits)


def claim_sentence(row: pd.Series, digits: int = 1) -> str:
    """One :func:`decide` row as a page's text cites it: "effect [low, high] unit: verdict, on n
    seeds" ("effect unit: ..." without an interval); an untested claim by its verdict alone."""
    effect = effect_text(row, digits)
    if effect == "–" or row["verdict"] in UNTESTED:
        return str(row["verdict"])
    seeds = int(row["seeds"])
    return f"{effect} {row['unit']}: {row['verdict']}, on {seeds} seed{'s' if seeds != 1 else ''}"


def headline(rows: pd.DataFrame, claim: Claim | None = None, digits: int = 1) -> pd.DataFrame:
    """``claim`` (None: the paper's headline, :data:`MIXED_BEATS_JOINT_HIGH`) in both readings, from
    the :func:`decide` rows of Table 1 and of its equal-budget twin: one row per profile row and
    reading, with the effect and its simultaneous interval, the seeds decided on and the verdict,
    as the status page and the intro open with it."""
    claim = claim or MIXED_BEATS_JOINT_HIGH
    keys = {claim.key: READINGS[claim.needs], f"{claim.key}_equal_budget": READINGS["learned"]}
    chosen = rows[rows["key"].isin(keys)].reset_index(drop=True)
    return pd.DataFrame(
        {
            "row": chosen["scale"].str.replace(r" \(budgets.*$", "", regex=True),
            "reading": chosen["key"].map(keys),
            f"{claim.statement}: effect [CI]": [
                text if (text := effect_text(r, digits)) == "–" else f"{text} {r['unit']}" for _, r in chosen.iterrows()
            ],
            "seeds": chosen["seeds"],
            "verdict": chosen["verdict"],
        }
    ).set_index(["row", "reading"])


def headline_sentence(rows: pd.DataFrame, claim: Claim | None = None) -> str:
    """``claim`` (None: the paper's headline) in words, from the rows :func:`headline` reads: on how
    many of the build's rows and readings it is held, what the others are, and what that says."""
    claim = claim or MIXED_BEATS_JOINT_HIGH
    verdicts = headline(rows, claim)["verdict"]
    if verdicts.empty:
        return f"No row of this build tests \u201c{claim.statement}\u201d."
    held, against = int((verdicts == "held").sum()), int((verdicts == "not held").sum())
    others = ", ".join(f"{verdict} on {count}" for verdict, count in verdicts[verdicts != "held"].value_counts().items())
    if held == len(verdicts):
        conclusion = "this build confirms it"
    elif held == 0:
        conclusion = "this build contradicts it" if against else "this build does not confirm it at this scale"
    else:
        conclusion = "this build confirms it on some rows and readings only"
    return (f"\u201c{claim.statement}\u201d is held on {held} of the {len(verdicts)} rows and readings of this build"
            f"{f' ({others})' if others else ''}: {conclusion}.")


def measures_view(rows: pd.DataFrame) -> pd.DataFrame:
    """How each claim of :func:`decide` rows is measured and where it holds, one row per claim."""
    def holds(row: pd.Series) -> str:
        claim = _claim(row["key"])
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


AGREEMENT_COLUMNS: tuple[str, ...] = ("claim", "scale", "book seeds", "fresh seeds", "the fresh seeds")

FRESH_READINGS: tuple[str, ...] = ("confirmed", "contradicted", "not confirmed (runs not evidence)", "not confirmed (interval)")
"""How a fresh set of seeds reads a held or not held verdict (:func:`fresh_reading`)."""


def fresh_reading(book: str, fresh: str | None) -> str:
    """How a fresh set of seeds reads the book's verdict ``book`` given its own ``fresh``:
    "confirmed" (the same verdict), "contradicted" (the other decided one), "not confirmed (runs
    not evidence)" (untested there) or "not confirmed (interval)" (inconclusive there); "–" where
    the book decided nothing (inconclusive or untested) or no fresh verdict was made."""
    if book not in ("held", "not held") or not isinstance(fresh, str) or fresh == "–":
        return "–"
    if fresh == book:
        return "confirmed"
    if fresh in ("held", "not held"):
        return "contradicted"
    return "not confirmed (interval)" if fresh == "inconclusive" else "not confirmed (runs not evidence)"


def agreement(book: pd.DataFrame, fresh: pd.DataFrame | None) -> pd.DataFrame:
    """The book's verdicts beside those of a disjoint set of seeds (both :func:`decide` rows of the
    same claims and rows): ``claim``, ``scale`` (the book's), the verdict on the ``book seeds`` and
    on the ``fresh seeds``, and how ``the fresh seeds`` read a held or not held one
    (:func:`fresh_reading`). Without ``fresh`` rows (None), an empty frame of those columns."""
    if fresh is None:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    merged = book.merge(fresh[["key", "compared", "verdict"]], on=["key", "compared"], how="left", suffixes=("", "_fresh"))
    fresh_verdicts = merged["verdict_fresh"].fillna("–")
    readings = [fresh_reading(b, f) for b, f in zip(merged["verdict"], fresh_verdicts)]
    columns = (merged["claim"], merged["scale"], merged["verdict"], fresh_verdicts, readings)
    return pd.DataFrame(dict(zip(AGREEMENT_COLUMNS, columns)))


def agreement_counts(table: pd.DataFrame) -> dict[str, int]:
    """What :func:`agreement`'s ``table`` says in numbers: verdicts ``compared``, those that
    ``agree`` (the same verdict on both sets of seeds), the book's ``decided`` ones (held or not
    held) and those of them ``not_confirmed`` (contradicted, or not confirmed by the fresh seeds)."""
    readings = table["the fresh seeds"]
    return {
        "compared": len(table),
        "agree": int((table["book seeds"] == table["fresh seeds"]).sum()),
        "decided": int(table["book seeds"].isin(("held", "not held")).sum()),
        "not_confirmed": int(readings.isin(FRESH_READINGS[1:]).sum()),
    }


# --- the claims Table 1 and the training-cost page test -----------------------------------------

HIGH_BUDGETS: tuple[float, ...] = (0.75, 1.0)

def _restated(claim: Claim, suffix: str, qualifier: str, **changes: Any) -> Claim:
    """``claim`` read another way: its key with ``_suffix``, its statement with ``, qualifier``, and
    any other field ``changes`` names."""
    return dataclasses.replace(claim, key=f"{claim.key}_{suffix}", statement=f"{claim.statement}, {qualifier}", **changes)


MIXED_BEATS_JOINT_HIGH = Claim(
    "mixed_beats_joint_high",
    "Mixed is more accurate than joint at high budgets",
    "paper (Table 1), second-hand",
    "mixed - joint accuracy, mean of the 75% and 100% budgets, paired by seed",
    "points",
)
DISJOINT_WEAK_LOW = Claim(
    "disjoint_weak_low",
    "Disjoint is the weakest regime at low budgets",
    "paper (Table 1), second-hand",
    "the worse of joint and mixed - disjoint, accuracy at the lowest budget every run can meet "
    "(25% where the first exits allow it), paired by seed",
    "points",
)
MIXED_BEST = Claim(
    "mixed_best",
    "Mixed is the best regime overall",
    "paper (abstract), second-hand",
    "mixed - the better of disjoint and joint, accuracy averaged over the budgets every run can meet, "
    "paired by seed",
    "points",
)
MIXED_GAIN_1_3 = Claim(
    "mixed_gain_1_3",
    "Mixed is 1-3% more accurate at higher budgets",
    "one-page summary (not the paper)",
    "mixed - the better of disjoint and joint, mean of the 75% and 100% budgets; held when the CI "
    "lies within [1, 3] points (our reading)",
    "points",
    kind="within",
    interval=(1.0, 3.0),
)
MIXED_TIME_27 = Claim(
    "mixed_time_27",
    "Mixed needs 27% less training time",
    "one-page summary (not the paper)",
    "100 x (1 - optimiser steps of mixed (P1 + P2) / optimiser steps of joint (P2)) until early stopping "
    "ends every phase, per seed (machine-independent; wall time is shown beside it); held when the CI "
    "lies within [17, 37]% (27 +- 10, our tolerance)",
    "%",
    kind="within",
    interval=(17.0, 37.0),
    needs="early_stopping",
)
MIXED_TIME_27_MACS = _restated(
    MIXED_TIME_27,
    "macs",
    "in training MACs",
    measure="100 x (1 - training MACs of mixed (P1 + P2) / training MACs of joint (P2)) until early stopping "
    "ends every phase, per seed (ours: each step's forward of what its phase computes, the backbone alone in P1 "
    "and every exit in P2, plus a backward of twice the MACs the gradient flows through, :mod:`mexit.evaluate.cost`); "
    "held when the CI lies within [17, 37]% "
    "(27 +- 10, our tolerance)",
)
TIME_CLAIMS: tuple[Claim, ...] = (MIXED_TIME_27, MIXED_TIME_27_MACS)
TIME_MEASURES: dict[Claim, str] = {MIXED_TIME_27: "steps", MIXED_TIME_27_MACS: "train_macs"}
"""The training-time claim in two machine-independent units: optimiser steps and training MACs."""
TABLE1_CLAIMS: tuple[Claim, ...] = (MIXED_BEATS_JOINT_HIGH, DISJOINT_WEAK_LOW, MIXED_BEST, MIXED_GAIN_1_3)


def _at_equal_budget(claim: Claim) -> Claim:
    """``claim`` read at an equal training budget (:func:`mexit.study.equal_budget_study`): the same
    effect on runs that each trained the same number of epochs, which need only have learned."""
    return _restated(
        claim,
        "equal_budget",
        "at an equal training budget",
        measure=f"{claim.measure}; every regime trained the same number of epochs (joint all of them in P2, "
        "disjoint and mixed a share in P1 and the rest after it), a cosine schedule over each phase, no early stopping",
        needs="learned",
    )


TABLE1_EQUAL_BUDGET_CLAIMS: tuple[Claim, ...] = tuple(_at_equal_budget(c) for c in TABLE1_CLAIMS)
"""Table 1's claims at an equal training budget: the second reading of the headline."""


def _on_modern_families(claim: Claim) -> Claim:
    """``claim`` tested on backbone families the paper never trained (the architectures page)."""
    return _restated(
        claim,
        "architectures",
        "on a family the paper never trained",
        source="open question (the paper's summary: more complex architectures)",
    )


ARCHITECTURE_CLAIMS: tuple[Claim, ...] = tuple(_on_modern_families(c) for c in TABLE1_CLAIMS[:2])
"""The headline's two claims (mixed beats joint at high budgets; disjoint is weakest at low ones)
on modern families, one verdict per family (the architectures page)."""

MIXED_ADVANTAGE_GROWS = Claim(
    "mixed_advantage_grows",
    "Mixed's advantage over joint at high budgets grows with the model",
    "open question (the paper's summary: larger and deeper models)",
    "per seed, the slope of the least-squares line through mixed - joint accuracy (mean of the 75% and "
    "100% budgets) at each size of one family against log2 of the size's backbone MACs (ours); held when "
    "the CI lies above 0, not held (it shrinks) when below",
    "points per doubling of MACs",
)
DISJOINT_DEFICIT_GROWS = Claim(
    "disjoint_deficit_grows",
    "Disjoint's deficit at low budgets grows with the model",
    "open question (the paper's summary: larger and deeper models)",
    "per seed, the slope of the least-squares line through the worse of joint and mixed - disjoint "
    "(accuracy at the lowest budget every run of a size can meet) at each size against log2 of the "
    "size's backbone MACs (ours); held when the CI lies above 0, not held (it shrinks) when below",
    "points per doubling of MACs",
)
SCALING_CLAIMS: tuple[Claim, ...] = (MIXED_ADVANTAGE_GROWS, DISJOINT_DEFICIT_GROWS)
"""The headline's two effects as trends across the sizes of one family (the scaling page); at each
size the effects themselves are Table 1's claims, decided as Table 1 decides them."""
SCALED_EFFECTS: dict[Claim, Claim] = dict(zip(SCALING_CLAIMS, TABLE1_CLAIMS[:2]))
"""Each trend claim and the per-size claim whose effect it follows."""

TUNED_PLACEMENT_BEATS_EVERY = Claim(
    "tuned_placement_beats_every",
    "A placement tuned to a budget, retrained, beats an IC after every block at that budget",
    "open question (the paper's summary: how many ICs, and where)",
    "per regime: the chosen placement retrained alone - the dense model (an IC after every block), test "
    "accuracy at each target budget (each run's most accurate point on validation), averaged over the target "
    "budgets both meet, paired by seed (ours)",
    "points",
)
PLACEMENT_DEPENDS_ON_REGIME = Claim(
    "placement_depends_on_regime",
    "The best placement for a budget depends on the regime",
    "open question (the paper's summary: how many ICs, and where)",
    "per regime: on its dense runs' test split, its own chosen placements - the best of the other regimes' "
    "choices, at each target budget, averaged over the budgets, paired by seed; held when the CI lies above "
    "0.5 points (ours: a smaller gain is no dependence worth choosing for)",
    "points",
    kind="within",
    interval=(0.5, math.inf),
)
DENSE_PREDICTS_RETRAINED = Claim(
    "dense_predicts_retrained",
    "A placement's accuracy read from the dense model predicts its accuracy retrained alone",
    "open question (the paper's summary: how many ICs, and where)",
    "per regime: the chosen placement retrained alone - the same placement read from the dense model, "
    "test accuracy at each target budget, averaged over the budgets both meet, paired by seed; held when "
    "the CI lies within [-2, 2] points (ours: the margin of the prediction)",
    "points",
    kind="within",
    interval=(-2.0, 2.0),
)
IC_DESIGN_CLAIMS: tuple[Claim, ...] = (TUNED_PLACEMENT_BEATS_EVERY, PLACEMENT_DEPENDS_ON_REGIME, DENSE_PREDICTS_RETRAINED)
"""Placements chosen from a dense model for a target budget (the IC-design page)."""

# --- the claims the analysis pages test ----------------------------------------------------------

JOINT_ICS_DOMINATE_MIDDLE = Claim(
    "joint_ics_dominate_middle",
    "In joint training, the ICs' gradients dominate the middle of the network",
    "paper (gradient dominance), second-hand",
    "joint at the end of P2: the largest IC's gradient share minus the final head's, in % of the "
    "block's gradient, mean over the middle third of the blocks, per seed (our reading)",
    "% of the gradient",
)
JOINT_ICS_TOGETHER_DOMINATE_MIDDLE = Claim(
    "joint_ics_together_dominate_middle",
    "In joint training, the ICs' gradients together outweigh the final head's in the middle of the network",
    "paper (gradient dominance), second-hand",
    "joint at the end of P2: the ICs' summed gradient share minus the final head's, in % of the block's "
    "gradient, mean over the middle third of the blocks, per seed (our second reading of the claim above: "
    "all ICs together, not the largest one)",
    "% of the gradient",
)
MIXED_DEEPER_DOMINATE = Claim(
    "mixed_deeper_dominate",
    "In mixed training, deeper classifiers dominate the backbone's gradient",
    "paper (gradient dominance), second-hand",
    "mixed - joint at the end of P2: the share-weighted mean depth of the exits driving the middle "
    "third of the blocks, in % of the backbone's depth, paired by seed (our reading)",
    "% depth",
)
DISJOINT_MIXED_ONE_BASIN = Claim(
    "disjoint_mixed_one_basin",
    "Disjoint and mixed solutions lie in one basin",
    "paper (Figure 3), second-hand",
    "the final exit's test-error barrier on the linear path between disjoint and mixed (BatchNorm "
    "recomputed), per seed; held when the CI lies below 2 points (Frankle et al.'s threshold, on our barrier, "
    "which rises from the line between the end errors where their instability rises from the end errors' mean); "
    "disjoint and mixed start from the same stored P1, so a low barrier is close to given by construction",
    "points",
    kind="within",
    interval=(-math.inf, 2.0),
)
JOINT_OTHER_BASIN = Claim(
    "joint_other_basin",
    "Joint's solution lies in another basin than mixed's",
    "paper (Figure 3), second-hand",
    "the final exit's test-error barrier on the linear path between joint and mixed, per seed; held "
    "when the CI lies above 2 points (Frankle et al.'s threshold, on our barrier: see the basin claim above)",
    "points",
    kind="within",
    interval=(2.0, math.inf),
)
RANK_EARLY_HIGHER = Claim(
    "rank_early_higher",
    "Mixed's early representations have a higher numerical rank than joint's",
    "paper (numerical rank), second-hand",
    "mixed - joint numerical rank in % of the rank measurable, mean over the first third of the "
    "blocks, paired by seed",
    "% of max rank",
)
RANK_DEEP_LOWER = Claim(
    "rank_deep_lower",
    "Mixed's deep representations have a lower numerical rank than joint's",
    "paper (numerical rank), second-hand",
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
    JOINT_ICS_TOGETHER_DOMINATE_MIDDLE,
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
    "paper (ablations), second-hand",
    "per variant: mixed - the best other regime the variant trains, accuracy averaged over the "
    "budgets every run of the variant can meet, paired by seed",
    "points",
)
SCALING_UNNEEDED_WITH_MIXED = Claim(
    "scaling_unneeded_with_mixed",
    "Mixed training makes loss scaling and gradient equilibrium unnecessary",
    "paper (loss scaling, gradient equilibrium), second-hand",
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
    "one-page summary (not the paper; IC size)",
    "per head: disjoint with it - disjoint with the page's first head (the smallest), accuracy "
    "averaged over the budgets both meet, paired by seed",
    "points",
)
SPLIT_BEATS_JOINT = Claim(
    "split_beats_joint",
    "Spending part of a fixed epoch budget on the backbone alone beats joint training",
    "ours (the paper's phase-split ablation; its finding is not in our sources)",
    "per split: mixed with that P1:P2 split - joint with all epochs in P2, accuracy averaged over "
    "the budgets both meet, paired by seed (a fixed budget: the runs need only have learned)",
    "points",
    needs="learned",
)
ABLATION_CLAIMS: tuple[Claim, ...] = (MIXED_AHEAD, SCALING_UNNEEDED_WITH_MIXED, LARGER_ICS_HELP_DISJOINT, SPLIT_BEATS_JOINT)
MIXED_CALIBRATED = Claim(
    "mixed_calibrated",
    "Mixed's exits are no worse calibrated than joint's",
    "ours (beyond the paper)",
    "joint's expected calibration error - mixed's (15 equal-width bins of the maximum softmax, test "
    "split), averaged over the exits, paired by seed; held when the CI lies above -1 point (no worse "
    "within one point of ECE; our tolerance)",
    "points",
    kind="within",
    interval=(-1.0, math.inf),
)
MIXED_AHEAD_UNDER_SHIFT = Claim(
    "mixed_ahead_under_shift",
    "Mixed's advantage over joint at high budgets holds at every severity of corruption",
    "ours (beyond the paper)",
    "per severity: mixed - joint, accuracy on the corrupted test images at the high budgets' operating "
    "points (Table 1's thresholds, picked on the clean test split by the paper's rule), averaged over the budgets and the "
    "corruptions, paired by seed",
    "points",
)
MIXED_DETECTS_OOD = Claim(
    "mixed_detects_ood",
    "Mixed's exits tell out-of-distribution inputs apart no worse than joint's",
    "ours (beyond the paper)",
    "per out-of-distribution set: mixed's AUROC - joint's (the maximum softmax, the test split as "
    "the positives), averaged over the exits, paired by seed; held when the CI lies above -1 point "
    "(no worse within one point of AUROC; our tolerance)",
    "points",
    kind="within",
    interval=(-1.0, math.inf),
)
EARLY_EXIT_SAVES_TIME = Claim(
    "early_exit_saves_time",
    "Early exit at the lowest budget takes less wall-clock time than the backbone alone",
    "ours (beyond the paper)",
    "100 - the early-exit pass's time as % of the backbone alone's on the same images, at the lowest "
    "budget every timed run meets, averaged over the regimes: one value per timed seed; timed on the "
    "machine that built the page",
    "points of %",
)
BEYOND_CLAIMS: tuple[Claim, ...] = (MIXED_CALIBRATED, MIXED_AHEAD_UNDER_SHIFT, MIXED_DETECTS_OOD, EARLY_EXIT_SAVES_TIME)


def _under_rules(claim: Claim) -> Claim:
    """An ablation claim re-decided under each early-exit rule (open question 3 of the paper's summary)."""
    return _restated(
        claim,
        "rules",
        "under each early-exit rule",
        source="open question (the paper's summary: exit rules and loss scaling)",
    )


RULE_ABLATION_CLAIMS: tuple[Claim, ...] = (_under_rules(MIXED_AHEAD), _under_rules(SCALING_UNNEEDED_WITH_MIXED))
"""The loss-scaling ablation's claims under each exit rule: one family, whatever the rules."""


CLAIMS: tuple[Claim, ...] = (
    *TABLE1_CLAIMS, *TABLE1_EQUAL_BUDGET_CLAIMS, *TIME_CLAIMS, *ANALYSIS_CLAIMS, *ABLATION_CLAIMS, *BEYOND_CLAIMS,
    *ARCHITECTURE_CLAIMS, *RULE_ABLATION_CLAIMS, *SCALING_CLAIMS, *IC_DESIGN_CLAIMS,
)
FAMILIES: dict[str, tuple[Claim, ...]] = {
    "Table 1": TABLE1_CLAIMS,
    "Table 1 at an equal training budget": TABLE1_EQUAL_BUDGET_CLAIMS,
    "training time": TIME_CLAIMS,
    "analyses": ANALYSIS_CLAIMS,
    "ablations": ABLATION_CLAIMS,
    "beyond the paper": BEYOND_CLAIMS,
    "architectures": ARCHITECTURE_CLAIMS,
    "exit rules x loss scaling": RULE_ABLATION_CLAIMS,
    "trends across model sizes": SCALING_CLAIMS,
    "IC design": IC_DESIGN_CLAIMS,
}
"""The book-wide families of simultaneous intervals: a claim's interval level is set by its family's
size, whichever page decides it (:func:`decide`)."""


def table1_claims(points: pd.DataFrame, evidence: pd.DataFrame, equal_budget: bool = False) -> pd.DataFrame:
    """The Table 1 claims per row, from :func:`mexit.evaluate.run_points` tagged ``row``,
    ``regime`` and ``seed``, decided on ``evidence`` (:func:`decide`). Only budgets at which every
    run of the row has an operating point are used; the "low budget" is the lowest of them (25%
    where the first exits allow it). A claim whose regimes or budgets the points lack is untested.
    ``equal_budget``: the points are an equal-budget study's (:func:`mexit.study.equal_budget_study`),
    read as :data:`TABLE1_EQUAL_BUDGET_CLAIMS`."""
    return decide(table1_measurements(points, equal_budget), evidence)


def architecture_claims(points: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """:data:`ARCHITECTURE_CLAIMS` per row (a family), measured as Table 1's and decided on
    ``evidence`` in their own book-wide family."""
    reading = dict(zip(TABLE1_CLAIMS, ARCHITECTURE_CLAIMS))
    return decide(table1_measurements(points, reading=reading), evidence)


def scaling_claims(
    points: pd.DataFrame, evidence: pd.DataFrame, macs: Mapping[str, float], families: Sequence[Sequence[str]] | None = None
) -> pd.DataFrame:
    """The scaling page's claims on ``points`` (:func:`mexit.evaluate.run_points` of the sizes of
    one or more families, a row each) and ``evidence``: at each size, Table 1's first two claims
    decided as Table 1 decides them (so a size that is also a Table 1 row gets Table 1's verdict);
    across the sizes of each of ``families`` (lists of row labels; None: every row, one family),
    :data:`SCALING_CLAIMS`, each the per-seed slope of its effect against log2 of ``macs`` (each
    row's backbone MACs: :func:`mexit.evaluate.trends.per_doubling_slopes`), the effect measured at
    every size at the budgets that all of the family's runs can meet (so that the trend does not
    mix budgets), decided on the seeds whose runs are evidence at every size of the family (its row
    is :func:`trend_label`). A family of fewer than two distinct MACs gets no trend (untested)."""
    from mexit.evaluate.trends import has_trend, per_doubling_slopes

    measured = table1_measurements(points, reading={claim: claim for claim in SCALED_EFFECTS.values()})
    decided = [decide(measured, evidence)]
    for sizes in _families(points, families, macs):
        label = trend_label(sizes)
        by_trend = _family_effects(points, sizes)
        trends = []
        for trend, (by_size, regimes) in by_trend.items():
            slopes = per_doubling_slopes(by_size, macs) if has_trend(by_size, macs) else pd.Series(dtype=float)
            trends.append(assess(trend, slopes, label, Compared(label, regimes)))
        decided.append(decide(trends, evidence_across(evidence, sizes, label)))
    return pd.concat(decided, ignore_index=True)


def scaled_effects(
    points: pd.DataFrame, macs: Mapping[str, float], families: Sequence[Sequence[str]] | None = None,
    decided: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The per-size, per-seed effects the trends of :func:`scaling_claims` are fitted to: ``family``
    (:func:`trend_label`), ``claim`` (the trend's statement), ``row``, ``macs``, ``seed``, ``effect``
    and ``decided`` (whether the trend was decided on them). With ``decided`` rows
    (:func:`scaling_claims`'), a decided trend keeps only the seeds it was decided on, so that a line
    fitted to their means has the trend's effect as its slope; an untested one keeps every seed,
    ``decided`` False (its effects are shown, no line)."""
    from mexit.evaluate.trends import size_effects

    frames = []
    for sizes in _families(points, families, macs):
        label = trend_label(sizes)
        for trend, (by_size, _) in _family_effects(points, sizes).items():
            frame, was_decided = size_effects(by_size, macs), True
            if decided is not None:
                row = decided[(decided["key"] == trend.key) & (decided["scale"] == label)].iloc[0]
                was_decided = row["verdict"] not in UNTESTED
                if was_decided:
                    kept = set(row["effect_seeds"] or ()) - set(row["left_out"] or ())
                    frame = frame[frame["seed"].isin(kept)]
            frames.append(frame.assign(family=label, claim=trend.statement, decided=was_decided))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["family", "claim", "row", "macs", "seed", "effect", "decided"]]


def _families(points: pd.DataFrame, families: Sequence[Sequence[str]] | None, macs: Mapping[str, float]) -> list[list[str]]:
    """The families of sizes (row labels, smallest MACs first): ``families``, or every row as one."""
    rows = [str(row) for row in pd.unique(points["row"])]
    groups = [rows] if families is None else [list(family) for family in families]
    unknown = sorted({size for family in groups for size in family} - set(rows))
    if unknown:
        raise ValueError(f"families name rows {unknown} that the points lack; they have {rows}")
    return [sorted(family, key=lambda size: float(macs[size])) for family in groups]


def _family_effects(points: pd.DataFrame, sizes: Sequence[str]) -> dict[Claim, tuple[dict[str, pd.Series], tuple[str, ...]]]:
    """Per trend claim, its effect's per-seed values at each size, measured at the budgets every run
    of the family can meet, and the regimes it compares."""
    family = points[points["row"].isin(sizes)]
    common = set.intersection(*(set(_usable(family[family["row"] == size])) for size in sizes))
    measured = table1_measurements(family[family["budget"].isin(common)], reading={c: c for c in SCALED_EFFECTS.values()})
    effects = {}
    for trend, effect in SCALED_EFFECTS.items():
        items = [item for item in measured if item["key"] == effect.key]
        by_size = {str(item["compared"].row): pd.Series(item["effects"], index=item["effect_seeds"], dtype=float) for item in items}  # type: ignore[union-attr]
        regimes = items[0]["compared"].regimes if items else ("disjoint", "joint", "mixed")  # type: ignore[union-attr]
        effects[trend] = ({size: by_size[size] for size in sizes if size in by_size}, regimes)
    return effects


def trend_label(sizes: Sequence[str]) -> str:
    """How a trend across ``sizes`` (rows' labels, smallest first) is named where a row's label would be."""
    return f"{sizes[0]} to {sizes[-1]} ({len(sizes)} sizes)" if len(sizes) > 1 else str(sizes[0])


def evidence_across(evidence: pd.DataFrame, rows: Sequence[str], label: str) -> pd.DataFrame:
    """:meth:`mexit.study.Study.evidence` pooled over ``rows`` into one row named ``label``: a
    regime's run of a seed is evidence only where that seed's runs of the regime are evidence at
    every row, and its ``why`` names the rows where they are not."""
    of_rows = evidence[evidence["row"].isin(rows)]
    pooled = []
    for (regime, seed), runs in of_rows.groupby(["regime", "seed"], sort=False):
        failing = runs[~runs["evidence"].astype(bool)]
        capped = runs[~runs["early_stopped"].astype(bool)]
        pooled.append({
            "row": label, "regime": regime, "seed": seed, "evidence": failing.empty,
            "early_stopped": capped.empty,
            "learned": bool(runs["learned"].astype(bool).all()) if "learned" in runs.columns else True,
            "full_budget": bool(runs["full_budget"].astype(bool).all()) if "full_budget" in runs.columns else True,
            "why": "; ".join(f"{r.row}: {r.why}" for r in failing.itertuples()),
        })
    return pd.DataFrame(pooled, columns=["row", "regime", "seed", "evidence", "early_stopped", "learned", "full_budget", "why"])


def table1_measurements(
    points: pd.DataFrame, equal_budget: bool = False, reading: Mapping[Claim, Claim] | None = None
) -> list[dict[str, object]]:
    """The Table 1 claims measured per row (:func:`assess`), not yet decided: see :func:`table1_claims`
    (``equal_budget``: as :data:`TABLE1_EQUAL_BUDGET_CLAIMS`, on an equal-budget study's points;
    ``reading``: each Table 1 claim as the claim it is measured as, those it omits left out)."""
    if reading is None:
        reading = dict(zip(TABLE1_CLAIMS, TABLE1_EQUAL_BUDGET_CLAIMS if equal_budget else TABLE1_CLAIMS))
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
        every = ("disjoint", "joint", "mixed")
        effects = {
            MIXED_BEATS_JOINT_HIGH: (mixed_high - joint_high, high, ("joint", "mixed")),
            DISJOINT_WEAK_LOW: (worse_low - at("disjoint", low), low, every),
            MIXED_BEST: (mixed_all - pd.concat([joint_all, disjoint_all], axis=1).max(axis=1, skipna=False), usable, every),
            MIXED_GAIN_1_3: (mixed_high - pd.concat([joint_high, disjoint_high], axis=1).max(axis=1, skipna=False), high, every),
        }
        for claim, (effect, budgets, regimes) in effects.items():
            if claim in reading:
                rows.append(assess(reading[claim], effect, _where(label, budgets), Compared(str(label), regimes)))
    return rows


def rule_claims(points_by_rule: dict[str, pd.DataFrame], evidence: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 claims re-measured under each early-exit rule (``{rule: run_points}``, as
    :func:`mexit.evaluate.rules.rule_tables` gives them), decided together as one family, with a
    ``rule`` column; each ``scale`` names its rule."""
    measured, rules = [], []
    for rule, points in points_by_rule.items():
        for item in table1_measurements(points):
            measured.append({**item, "scale": f"{item['scale']}; rule: {rule}"})
            rules.append(rule)
    return decide(measured, evidence).assign(rule=rules)


def verdicts_by_rule(status: pd.DataFrame) -> pd.DataFrame:
    """:func:`rule_claims` as one row per claim and scale, one column per rule, cells the verdicts."""
    frame = status.assign(where=status["scale"].str.replace(r"; rule: .*$", "", regex=True))
    table = frame.pivot_table(index=["claim", "where"], columns="rule", values="verdict", aggfunc="first", sort=False)
    table.columns.name = None
    return table[list(pd.unique(status["rule"]))]


def time_claims(costs: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The training-time claim per row, in optimiser steps and in training MACs
    (:data:`TIME_MEASURES`), from :func:`mexit.evaluate.regime_cost` (each regime charged its own
    phases, P1 included), decided on ``evidence``: only on seeds where early stopping ended every
    phase of the runs compared."""
    rows = []
    for label, frame in costs.groupby("row", sort=False):
        for claim, value in TIME_MEASURES.items():
            saving = 100 * (1 - cost_ratio(frame, "mixed", "joint", value=value).droplevel("row"))
            rows.append(assess(claim, saving, label, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


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


def dominance_claims(end: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The gradient-dominance claims per row, from the probes at the end of P2
    (:func:`mexit.analysis.runs.dominance_at`), tagged ``row``, ``regime`` and ``seed``, decided on
    ``evidence``."""
    rows = []
    for label, frame in end.groupby("row", sort=False):
        blocks = int(frame["exit_block"].max())
        middle = frame[frame["block"].isin(depth_thirds(blocks)[1])]
        final = middle["exit_block"] == blocks
        per_block = middle.groupby(["regime", "seed", "block"])
        ic_top = middle[~final].groupby(["regime", "seed", "block"])["share"].max()
        final_share = middle[final].set_index(["regime", "seed", "block"])["share"]
        lead = (100 * (ic_top - final_share)).rename("lead").reset_index()
        ic_sum = middle[~final].groupby(["regime", "seed", "block"])["share"].sum()
        together = (100 * (ic_sum - final_share)).rename("lead").reset_index()
        depth = (middle["share"] * middle["exit_block"] / blocks * 100).groupby([middle["regime"], middle["seed"], middle["block"]]).sum()
        depth = (depth / per_block["share"].sum()).rename("depth").reset_index()
        where = f"{label} (blocks {', '.join(map(str, depth_thirds(blocks)[1]))} of {blocks})"
        rows.append(assess(JOINT_ICS_DOMINATE_MIDDLE, _per_seed(lead, "joint", "lead"), where, Compared(str(label), ("joint",))))
        rows.append(assess(JOINT_ICS_TOGETHER_DOMINATE_MIDDLE, _per_seed(together, "joint", "lead"), where, Compared(str(label), ("joint",))))
        shift = _per_seed(depth, "mixed", "depth") - _per_seed(depth, "joint", "depth")
        rows.append(assess(MIXED_DEEPER_DOMINATE, shift, where, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


BASIN_PAIRS: tuple[tuple[str, str], ...] = (("disjoint", "mixed"), ("joint", "mixed"))
"""The pairs of regimes whose linear paths the basin claims measure."""


def final_barriers(barriers: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`mexit.analysis.runs.barrier_table` that the basin claims measure: the
    linear paths' barriers at each row's final exit."""
    linear = barriers[barriers["path"] == "linear"]
    return linear[linear["exit"] == linear.groupby("row")["exit"].transform("max")]


def connectivity_claims(barriers: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The basin claims per row, from the linear paths' :func:`mexit.analysis.runs.barrier_table`
    (the final exit's error barrier, :func:`final_barriers`), decided on ``evidence``."""
    rows = []
    for label, final in final_barriers(barriers).groupby("row", sort=False):
        for claim, pair in zip((DISJOINT_MIXED_ONE_BASIN, JOINT_OTHER_BASIN), BASIN_PAIRS):
            barrier = final[final["pair"] == pair_label(*pair)].groupby("seed")["error_barrier"].mean()
            rows.append(assess(claim, barrier, label, Compared(str(label), pair)))
    return decide(rows, evidence)


def calibration_claims(per_exit: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The calibration claim per row, from :func:`mexit.evaluate.exit_calibration` tagged ``row``,
    ``regime`` and ``seed`` (its ``ece_pct`` per exit), decided on ``evidence``. A row without
    joint or mixed runs is left out."""
    rows = []
    for label, frame in per_exit.groupby("row", sort=False):
        if not {"joint", "mixed"} <= set(frame["regime"]):
            continue
        effect = _per_seed(frame, "joint", "ece_pct") - _per_seed(frame, "mixed", "ece_pct")
        rows.append(assess(MIXED_CALIBRATED, effect, f"{label} (mean over exits)", Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


def shift_claims(shift: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """:data:`MIXED_AHEAD_UNDER_SHIFT` per row and severity, from
    :func:`mexit.analysis.robustness.shift_table`, decided on ``evidence``: at the high budgets at
    which every run has a clean operating point. A row without joint or mixed runs is left out."""
    rows = []
    for label, frame in shift.groupby("row", sort=False):
        if not {"joint", "mixed"} <= set(frame["regime"]):
            continue
        high = [b for b in HIGH_BUDGETS if b in _usable(frame[frame["severity"] == 0])]
        shifted = frame[(frame["severity"] > 0) & frame["budget"].isin(high)]
        for severity, part in shifted.groupby("severity"):
            effect = _per_seed(part, "mixed", "accuracy") - _per_seed(part, "joint", "accuracy")
            where = _where(f"{label}, severity {severity}", high)
            rows.append(assess(MIXED_AHEAD_UNDER_SHIFT, effect, where, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


def ood_claims(ood: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """:data:`MIXED_DETECTS_OOD` per row and out-of-distribution set, from the ``"exit"`` view of
    :func:`mexit.analysis.robustness.ood_table`, decided on ``evidence``."""
    rows = []
    exits = ood[ood["view"] == "exit"]
    for (label, name), frame in exits.groupby(["row", "ood_set"], sort=False):
        if not {"joint", "mixed"} <= set(frame["regime"]):
            continue
        effect = _per_seed(frame, "mixed", "ood_auroc") - _per_seed(frame, "joint", "ood_auroc")
        where = f"{label}, {name} (mean over exits)"
        rows.append(assess(MIXED_DETECTS_OOD, effect, where, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


def wall_clock_claims(timings: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """:data:`EARLY_EXIT_SAVES_TIME` per row, from :func:`mexit.analysis.runs.wall_clock_table`,
    decided on ``evidence`` (every regime timed)."""
    rows = []
    for label, frame in timings.groupby("row", sort=False):
        timed = frame.groupby(["regime", "seed"]).ngroups
        budgets = frame.dropna(subset=["budget"]).groupby("budget").size()
        every = sorted(float(b) for b, n in budgets.items() if n == timed)
        lowest = every[:1]
        at_lowest = frame[frame["budget"].isin(lowest)]
        saving = (100 - at_lowest["time_pct"]).groupby(at_lowest["seed"]).mean()  # one replicate a timed seed
        regimes = tuple(pd.unique(frame["regime"]))
        rows.append(assess(EARLY_EXIT_SAVES_TIME, saving, _where(str(label), lowest), Compared(str(label), regimes)))
    return decide(rows, evidence)


def rank_claims(ranks: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The numerical-rank claims per row, from :func:`mexit.analysis.runs.rank_table` (its
    ``rank_pct``: the rank in % of the largest measurable), decided on ``evidence``."""
    rows = []
    for label, frame in ranks.groupby("row", sort=False):
        early, _, deep = depth_thirds(int(frame["block"].max()))
        for claim, blocks, sign in ((RANK_EARLY_HIGHER, early, 1), (RANK_DEEP_LOWER, deep, -1)):
            part = frame[frame["block"].isin(blocks)]
            effect = sign * (_per_seed(part, "mixed", "rank_pct") - _per_seed(part, "joint", "rank_pct"))
            where = f"{label} (blocks {', '.join(map(str, blocks))})"
            rows.append(assess(claim, effect, where, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


def information_claims(information: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """The mutual-information claim per row, from :func:`mexit.analysis.runs.information_table`,
    decided on ``evidence``."""
    rows = []
    for label, frame in information.groupby("row", sort=False):
        deep = depth_thirds(int(frame["block"].max()))[2]
        part = frame[frame["block"].isin(deep)]
        effect = _per_seed(part, "mixed", "label_bits") - _per_seed(part, "joint", "label_bits")
        where = f"{label} (blocks {', '.join(map(str, deep))})"
        rows.append(assess(MIXED_DEEP_LABEL_INFORMATION, effect, where, Compared(str(label), ("joint", "mixed"))))
    return decide(rows, evidence)


def ablation_claims(points: pd.DataFrame, evidence: pd.DataFrame, change: tuple[Claim, str, str] | None = None) -> pd.DataFrame:
    """The ablation claims from :func:`mexit.evaluate.run_points` of a study with variants (tagged
    ``row``, ``variant``, ``regime``, ``seed``): :data:`MIXED_AHEAD` per row and variant that trains
    mixed and another regime; with ``change = (claim, regime, reference_regime)``, that claim per
    row and per variant after the row's first (the reference): ``regime``'s accuracy with the
    variant minus ``reference_regime``'s with the reference. Accuracy is averaged over the budgets
    at which every run compared has a point; pairs are matched by seed. Decided on ``evidence``."""
    return decide(ablation_measurements(points, change), evidence)


def rule_ablation_claims(
    points_by_rule: Mapping[str, pd.DataFrame], evidence: pd.DataFrame, change: tuple[Claim, str, str] | None = None
) -> pd.DataFrame:
    """:func:`ablation_claims` re-measured under each early-exit rule (``{rule: run_points}`` of an
    ablation study, :func:`mexit.evaluate.rules.rule_tables`), as :data:`RULE_ABLATION_CLAIMS`,
    decided together as one family, with a ``rule`` column; each ``scale`` names its rule."""
    reading = {claim.key: ruled for claim, ruled in zip((MIXED_AHEAD, SCALING_UNNEEDED_WITH_MIXED), RULE_ABLATION_CLAIMS)}
    measured, rules = [], []
    for rule, points in points_by_rule.items():
        for item in ablation_measurements(points, change):
            ruled = reading.get(str(item["key"]))
            if ruled is None:
                raise ValueError(f"no rule reading of the ablation claim {item['key']!r}; known: {sorted(reading)}")
            measured.append({**item, "claim": ruled.statement, "key": ruled.key, "source": ruled.source,
                             "scale": f"{item['scale']}; rule: {rule}"})
            rules.append(rule)
    return decide(measured, evidence).assign(rule=rules)


def ablation_measurements(points: pd.DataFrame, change: tuple[Claim, str, str] | None = None) -> list[dict[str, object]]:
    """The ablation claims measured (:func:`assess`), not yet decided: see :func:`ablation_claims`."""
    rows = []
    for (label, variant), frame in points.groupby(["row", "variant"], sort=False):
        regimes = list(pd.unique(frame["regime"]))
        if "mixed" not in regimes or len(regimes) < 2:
            continue
        budgets = _usable(frame)
        others = pd.concat([_budget_mean(frame, r, budgets) for r in regimes if r != "mixed"], axis=1).max(axis=1, skipna=False)
        effect = _budget_mean(frame, "mixed", budgets) - others
        compared = Compared(str(label), tuple(regimes), (str(variant),))
        rows.append(assess(MIXED_AHEAD, effect, _where(f"{label}, {variant}", budgets), compared))
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
                compared = Compared(str(label), tuple(dict.fromkeys((regime, reference_regime))), (str(variants[0]), str(variant)))
                rows.append(assess(claim, effect, where, compared))
    return rows


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
