"""Whether a run is evidence: each phase converged, and the run learned more than chance.

A verdict on a claim compares runs; a run still rising when its epoch cap stopped it, or one whose
exits are at chance, measures the cap or the seed, not the regime. This module decides, from what
the run store keeps (each phase's validation curve and how it ended, each exit's test logits):

- **a phase converged** when early stopping ended it inside its epoch cap. A phase that ran to its
  cap is not evidence, however flat its curve: under a schedule that anneals the learning rate to
  about zero there (cosine to ``min_lr`` near 0) every curve flattens at the cap whether or not a
  longer schedule would gain (``"schedule end"``; evidence only as ``"schedule checked"``: the same
  run retrained with every phase's schedule stretched over a cap longer by an integer factor (Table
  1's ``longer_schedule``), gained at most the tolerance below on the phase's best validation
  accuracy), and under a learning rate that stays up a test of the curve's last evaluations errs too
  often to decide (measured, not assumed: :func:`gate_errors`; on the quick profile's phases no
  window and tolerance of the grid measured keeps both its false alarms and its misses rare). Such a
  phase is still described: ``"plateau"`` when the best of its last ``window`` evaluations gains at
  most ``tolerance`` accuracy points on the best before them (:func:`plateau`; ``window`` the
  phase's patience, ``tolerance`` one binomial standard error of the validation split at the curve's
  best, at least :data:`MIN_TOLERANCE`), else ``"not converged"``. So caps are set where early
  stopping ends phases first, and readings at a stated training budget (which need no convergence)
  use their own runs. This gate is ours; it follows the patience rule of early stopping (Prechelt,
  "Early stopping - but when?", 1998) and the authors' protocol (a constant learning rate, early
  stopping inside caps no phase reaches). How often a curve test errs is measured by
  :func:`gate_errors`: a phase that early stopping ended under a constant learning rate (after any
  warm-up, whose length does not depend on the cap) is, cut at any earlier evaluation, exactly the
  phase a smaller cap would have given, and the rest of its curve says whether a longer run gained.
- **a run learned** when its most accurate exit beats chance (the test set's most frequent class)
  by more than three binomial standard errors at chance (:func:`learned`): a one-sided test at
  about 0.1%. A run at chance is not evidence, whatever its curves look like.
- **a phase ended by early stopping** is also what a claim about training time needs: a phase that
  ran to its cap measures the cap.
- **a run trained its stated budget** when no phase was ended by early stopping: what a reading at a
  stated training budget needs (with early stopping on, a phase's epochs are not the budget's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_WINDOW = 5
"""Evaluations a plateau must last in a phase without patience."""
MIN_TOLERANCE = 1.0
"""The fewest accuracy points the last ``window`` evaluations may gain on the best before them and still be a plateau."""
CHANCE_SES = 3.0
"""Binomial standard errors at chance that the best exit must clear to have learned."""
EVIDENCE_COLUMNS: tuple[str, ...] = ("converged", "learned", "early_stopped", "full_budget", "evidence", "why")
AT_CHANCE = "exits at chance"
"""How a run's ``why`` begins the reason that it learned nothing."""
NEEDS: tuple[str, ...] = ("convergence", "early_stopping", "learned")
"""What a verdict may ask of its runs (:attr:`mexit.claims.Claim.needs`): that they converged, that
early stopping ended every phase, or (a reading at a stated training budget) that they learned and
trained that budget, no phase ended by early stopping."""
STOPPED_EARLY = "a phase ended by early stopping, before its stated epochs"
"""Why a run read at a stated training budget is not evidence though it learned."""


def noise_tolerance(best: float, val_size: int) -> float:
    """The plateau tolerance (points) of a curve whose best value is ``best`` (%), measured on
    ``val_size`` validation images: one binomial standard error there, at least :data:`MIN_TOLERANCE`."""
    if val_size < 1:
        raise ValueError(f"val_size must be >= 1, got {val_size}")
    p = min(max(best / 100, 0.0), 1.0)
    return max(MIN_TOLERANCE, 100 * math.sqrt(p * (1 - p) / val_size))


def plateau(curve: Sequence[float], window: int, tolerance: float = MIN_TOLERANCE) -> tuple[bool, float]:
    """Whether ``curve`` (accuracies in %, one per evaluation) ends on a plateau, and the gain (points)
    of the best of its last ``window`` values over the best before them (NaN when the curve holds
    ``window`` values or fewer: too short to tell, not a plateau)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    values = np.asarray(curve, dtype=np.float64)
    if len(values) <= window:
        return False, math.nan
    gain = float(values[-window:].max() - values[:-window].max())
    return gain <= tolerance, gain


ENDINGS: tuple[str, ...] = ("early stopping", "schedule checked", "plateau", "schedule end", "not converged")
CONVERGED_ENDINGS: tuple[str, ...] = ENDINGS[:2]
"""The endings that make a phase evidence: early stopping, or a schedule's end that a longer
schedule measured did not improve on (the module's docstring)."""


def phase_ending(
    curve: Sequence[float],
    stopped_early: bool,
    window: int,
    tolerance: float = MIN_TOLERANCE,
    annealed: bool = False,
    longer: Sequence[float] | None = None,
) -> tuple[str, str]:
    """How one phase ended: one of :data:`ENDINGS` (:data:`CONVERGED_ENDINGS` converged), and in
    words. ``annealed``: the phase's schedule brought its learning rate to about zero at its cap;
    ``longer``: the same phase's validation curve in the run retrained with a longer, stretched
    schedule (None: not measured). A schedule's end is evidence only when ``longer``'s best gains at
    most ``tolerance`` on ``curve``'s best. A phase at its cap under a rate that stays up is
    described (a plateau or still rising) but is not evidence."""
    if stopped_early:
        return "early stopping", "early stopping"
    if annealed:
        ended = "ended by its schedule (learning rate annealed to about zero at the cap)"
        if len(curve) == 0:  # the authors' protocol without early stopping holds out no validation split
            return "schedule end", f"{ended}; no validation curve, so a longer schedule cannot check it"
        if longer is None or len(longer) == 0:
            return "schedule end", f"{ended}; not checked by a longer schedule"
        gain = float(np.max(longer) - np.max(curve))
        where = f"a longer schedule gains {gain:+.1f} points, tolerance {tolerance:.1f}"
        if gain <= tolerance:
            return "schedule checked", f"{ended}; {where}"
        return "schedule end", f"{ended}, not converged: {where}"
    if len(curve) == 0:
        return "not converged", "no validation curve"
    flat, gain = plateau(curve, window, tolerance)
    if math.isnan(gain):
        return "not converged", f"too few evaluations for a {window}-evaluation plateau ({len(curve)})"
    where = f"{gain:+.1f} points in its last {window} evaluations, tolerance {tolerance:.1f}"
    if flat:
        return "plateau", f"ran to its cap on a plateau ({where}), not ended by early stopping"
    return "not converged", f"still rising at the cap ({where})"


def learned(best_accuracy: float, labels: np.ndarray, ses: float = CHANCE_SES) -> tuple[bool, float]:
    """Whether ``best_accuracy`` (%) beats chance on ``labels``, and that chance level (%): the
    most frequent class's share, which a model that learned nothing reaches."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("labels must not be empty")
    chance = float(np.bincount(labels).max() / labels.size)
    margin = ses * math.sqrt(chance * (1 - chance) / labels.size)
    return best_accuracy > 100 * (chance + margin), 100 * chance


def phase_curve(trace: pd.DataFrame, phase: str, exits: Sequence[int]) -> np.ndarray:
    """One phase's validation curve: the mean validation accuracy (%) of ``exits`` at each evaluation."""
    part = trace[trace["phase"] == phase] if "phase" in trace.columns else trace.iloc[:0]
    columns = [f"val_acc_{i}" for i in exits if f"val_acc_{i}" in part.columns]
    return part[columns].mean(axis=1).to_numpy() if columns else np.array([])


def gate_errors(curves: Sequence[Sequence[float]], window: int, val_size: int, scale: float = 1.0) -> dict[str, float]:
    """How often the plateau test errs, measured on ``curves``: validation curves of phases that
    early stopping ended under a constant learning rate, after any warm-up (so each prefix is
    the phase a smaller cap would have given). Each curve is cut after every evaluation ``c``
    from ``window + 1`` to its end; the truth is whether the rest of the curve gains more than
    :func:`noise_tolerance` on the prefix's best (a longer run gained: truncated), the test is
    :func:`plateau` over ``window`` evaluations at ``scale`` times that tolerance. Returns the
    cuts of each truth (``converged_cuts``, ``truncated_cuts``), ``false_alarm`` (converged cuts
    called not converged, %), ``missed`` (truncated cuts called a plateau, %) and ``phases``."""
    counts = {"converged": 0, "truncated": 0, "false_alarm": 0, "missed": 0}
    for curve in curves:
        values = np.asarray(curve, dtype=np.float64)
        for cut in range(window + 1, len(values)):
            prefix = values[:cut]
            tolerance = noise_tolerance(float(prefix.max()), val_size)
            truly_converged = values[cut:].max() - prefix.max() <= tolerance
            called_converged, _ = plateau(prefix, window, scale * tolerance)
            counts["converged" if truly_converged else "truncated"] += 1
            counts["false_alarm"] += int(truly_converged and not called_converged)
            counts["missed"] += int(not truly_converged and called_converged)

    def rate(errors: int, cuts: int) -> float:
        return 100 * errors / cuts if cuts else math.nan

    return {"phases": len(curves), "converged_cuts": counts["converged"], "truncated_cuts": counts["truncated"],
            "false_alarm": rate(counts["false_alarm"], counts["converged"]), "missed": rate(counts["missed"], counts["truncated"])}


def run_evidence(
    trace: pd.DataFrame,
    phases: pd.DataFrame,
    trained_exits: Sequence[Sequence[int]],
    window: int,
    exit_accuracies: Sequence[float],
    test_labels: np.ndarray,
    val_size: int,
    annealed: Sequence[bool] | None = None,
    longer_trace: pd.DataFrame | None = None,
) -> tuple[dict[str, object], pd.DataFrame]:
    """The evidence of one run: ``({converged, learned, early_stopped, full_budget, evidence, why},
    per-phase frame)``: ``early_stopped`` whether early stopping ended every phase, ``full_budget``
    whether it ended none (each phase trained its stated epochs).

    ``trace`` and ``phases`` are the run's (:meth:`mexit.store.Run.trace` and ``phases``, which hold
    ``stopped_early``, ``epochs_run`` and ``epoch_cap``); ``trained_exits[p]`` are the exits phase
    ``p``'s loss trains; ``window`` the plateau's evaluations (the run's patience); ``exit_accuracies`` each exit's test
    accuracy (%); ``val_size`` the validation split's images (the curves' noise,
    :func:`noise_tolerance`); ``annealed[p]`` whether phase ``p``'s schedule ends at about zero
    learning rate (None: none does); ``longer_trace`` the trace of the same run retrained with a
    longer, stretched schedule (None: not measured; :func:`phase_ending`). The per-phase frame has ``phase``, ``epochs_run``, ``epoch_cap``,
    ``ending`` (:data:`ENDINGS`), ``ended`` (in words) and ``converged``."""
    rows: list[dict[str, object]] = []
    problems: dict[str, list[str]] = {}  # why -> the phases it holds for
    annealed = list(annealed) if annealed is not None else [False] * len(phases)
    for (_, phase), exits, anneals in zip(phases.iterrows(), trained_exits, annealed, strict=True):
        curve = phase_curve(trace, phase["phase"], exits)
        tolerance = noise_tolerance(float(curve.max()), val_size) if len(curve) else MIN_TOLERANCE
        longer = phase_curve(longer_trace, phase["phase"], exits) if longer_trace is not None else None
        ending, ended = phase_ending(curve, bool(phase["stopped_early"]), window, tolerance, anneals, longer)
        ok = ending in CONVERGED_ENDINGS
        rows.append({"phase": phase["phase"], "epochs_run": int(phase["epochs_run"]), "epoch_cap": int(phase["epoch_cap"]),
                     "ending": ending, "ended": ended, "converged": ok})
        if not ok:
            problems.setdefault(ended, []).append(str(phase["phase"]))
    learned_ok, chance = learned(max(exit_accuracies), test_labels)
    reasons = [f"{', '.join(phases_)}: {why}" for why, phases_ in problems.items()]
    if not learned_ok:
        reasons.append(f"{AT_CHANCE} (best {max(exit_accuracies):.1f}% against {chance:.1f}%)")
    converged = all(r["converged"] for r in rows)
    summary = {
        "converged": converged,
        "learned": learned_ok,
        "early_stopped": bool(phases["stopped_early"].astype(bool).all()),
        "full_budget": not bool(phases["stopped_early"].astype(bool).any()),
        "evidence": converged and learned_ok,
        "why": "; ".join(reasons),
    }
    return summary, pd.DataFrame(rows)


def evidence_view(evidence: pd.DataFrame, by: Sequence[str] = ("row", "regime"), needs: str = "convergence") -> pd.DataFrame:
    """What a results page shows beside its budget table: per ``by`` group, how many runs are
    evidence (converged and above chance) and, for the others, why not (seed: reason).

    ``needs`` is what the page's verdicts ask of a run (:data:`NEEDS`). For a reading
    at a stated training budget (``"learned"``: convergence is not asked) the view shows instead how
    many runs learned and trained that budget (:func:`at_stated_budget`) and, for the others, why not."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {list(NEEDS)}, got {needs!r}")
    missing = [c for c in (*by, "seed", *EVIDENCE_COLUMNS) if c not in evidence.columns]
    if missing:
        raise ValueError(f"evidence lacks columns {missing}; it has {list(evidence.columns)}")

    def seeds_and_why(failing: pd.DataFrame) -> str:
        return "; ".join(
            f"{', '.join(f's{int(seed)}' for seed in runs['seed'])}: {why}" for why, runs in failing.groupby("why", sort=False)
        ) or "–"

    records = []
    for key, group in evidence.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if needs == "learned":
            ok = at_stated_budget(group)
            failing = group[~ok]
            why_not = failing.assign(why=[_stated_budget_reason(run) for _, run in failing.iterrows()])
            counts = {"runs that learned at the stated budget": f"{int(ok.sum())} of {len(group)}", "not evidence": seeds_and_why(why_not)}
        else:
            counts = {
                "evidence runs (converged, learned)": f"{int(group['evidence'].sum())} of {len(group)}",
                "ended by early stopping": f"{int(group['early_stopped'].sum())} of {len(group)}",
                "not evidence": seeds_and_why(group[~group["evidence"].astype(bool)]),
            }
        records.append({**dict(zip(by, key)), **counts})
    return pd.DataFrame(records).set_index(list(by))


def at_stated_budget(evidence: pd.DataFrame) -> pd.Series:
    """Which runs of ``evidence`` (:func:`run_evidence` rows) a reading at a stated training budget
    may rest on: those that learned and trained that budget, no phase ended by early stopping."""
    missing = [c for c in ("learned", "full_budget") if c not in evidence.columns]
    if missing:
        raise ValueError(f"evidence lacks columns {missing}; it has {list(evidence.columns)}")
    return evidence["learned"].astype(bool) & evidence["full_budget"].astype(bool)


def _stated_budget_reason(run: pd.Series) -> str:
    """Why ``run`` is not evidence at a stated training budget: the part of its ``why``
    (:func:`run_evidence`) that says its exits are at chance, and whether early stopping cut it short."""
    parts = [] if bool(run["learned"]) else [next((p for p in str(run["why"]).split("; ") if p.startswith(AT_CHANCE)), AT_CHANCE)]
    return "; ".join([*parts, *([] if bool(run["full_budget"]) else [STOPPED_EARLY])])


def phase_view(phases: pd.DataFrame, by: Sequence[str] = ("row", "regime")) -> pd.DataFrame:
    """How the phases ended, per ``by`` group and phase, from the per-phase frames of
    :func:`run_evidence`: mean epochs run against the cap, and how many runs each ending had."""
    missing = [c for c in (*by, "phase", "epochs_run", "epoch_cap", "ending") if c not in phases.columns]
    if missing:
        raise ValueError(f"phases lacks columns {missing}; it has {list(phases.columns)}")
    grouped = phases.groupby([*by, "phase"], sort=False)
    view = pd.DataFrame({"epochs run (mean)": grouped["epochs_run"].mean().round(1), "epoch cap": grouped["epoch_cap"].max()})
    for ending in ENDINGS:
        view[ending] = grouped["ending"].apply(lambda e, ending=ending: f"{int((e == ending).sum())} of {len(e)}")
    return view
