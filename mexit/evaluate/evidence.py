"""Whether a run is evidence: each phase converged, and the run learned more than chance.

A verdict on a claim compares runs; a run still rising when its epoch cap stopped it, or one whose
exits are at chance, measures the cap or the seed, not the regime. This module decides, from what
the run store keeps (each phase's validation curve and how it ended, each exit's test logits):

- **a phase converged** when early stopping ended it, or its validation curve had plateaued before
  the cap: the best of its last ``window`` evaluations gains at most ``tolerance`` accuracy points
  on the best before them (:func:`plateau`). The curve is the mean validation accuracy of the exits
  the phase's loss trains (P1: the final exit; P3: the ICs). ``window`` is the phase's patience
  where it has one (what early stopping would have waited), else :data:`DEFAULT_WINDOW`;
  ``tolerance`` is one binomial standard error of an accuracy measured on the validation split at
  the curve's best value, and at least :data:`MIN_TOLERANCE` (:func:`noise_tolerance`): a gain the
  validation split cannot resolve is no evidence that the curve still rises. A phase
  with fewer than ``window + 1`` evaluations, or none (no validation split), cannot show a plateau
  and is not converged evidence. This test is ours; it follows the patience rule of early stopping
  (Prechelt, "Early stopping - but when?", 1998) with a tolerance for validation noise.
- **a run learned** when its most accurate exit beats chance (the test set's most frequent class)
  by more than three binomial standard errors at chance (:func:`learned`): a one-sided test at
  about 0.1%. A run at chance is not evidence, whatever its curves look like.
- **a phase ended by early stopping** is what a claim about training time needs: a phase that ran to
  its cap measures the cap.
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
EVIDENCE_COLUMNS: tuple[str, ...] = ("converged", "learned", "early_stopped", "evidence", "why")


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


ENDINGS: tuple[str, ...] = ("early stopping", "plateau", "not converged")


def phase_ending(
    curve: Sequence[float], stopped_early: bool, window: int, tolerance: float = MIN_TOLERANCE
) -> tuple[str, str]:
    """How one phase ended: one of :data:`ENDINGS` (the first two converged), and in words."""
    if stopped_early:
        return "early stopping", "early stopping"
    if len(curve) == 0:
        return "not converged", "no validation curve"
    flat, gain = plateau(curve, window, tolerance)
    if math.isnan(gain):
        return "not converged", f"too few evaluations for a {window}-evaluation plateau ({len(curve)})"
    where = f"{gain:+.1f} points in its last {window} evaluations, tolerance {tolerance:.1f}"
    return ("plateau", f"plateau at the cap ({where})") if flat else ("not converged", f"still rising at the cap ({where})")


def learned(best_accuracy: float, labels: np.ndarray, ses: float = CHANCE_SES) -> tuple[bool, float]:
    """Whether ``best_accuracy`` (%) beats chance on ``labels``, and that chance level (%): the
    most frequent class's share, which a model that learned nothing reaches."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("labels must not be empty")
    chance = float(np.bincount(labels).max() / labels.size)
    margin = ses * math.sqrt(chance * (1 - chance) / labels.size)
    return best_accuracy > 100 * (chance + margin), 100 * chance


def run_evidence(
    trace: pd.DataFrame,
    phases: pd.DataFrame,
    trained_exits: Sequence[Sequence[int]],
    window: int,
    exit_accuracies: Sequence[float],
    test_labels: np.ndarray,
    val_size: int,
) -> tuple[dict[str, object], pd.DataFrame]:
    """The evidence of one run: ``({converged, learned, early_stopped, evidence, why}, per-phase frame)``.

    ``trace`` and ``phases`` are the run's (:meth:`mexit.store.Run.trace` and ``phases``, which hold
    ``stopped_early``, ``epochs_run`` and ``epoch_cap``); ``trained_exits[p]`` are the exits phase
    ``p``'s loss trains; ``window`` the plateau's evaluations (the run's patience); ``exit_accuracies`` each exit's test
    accuracy (%); ``val_size`` the validation split's images (the curves' noise,
    :func:`noise_tolerance`). The per-phase frame has ``phase``, ``epochs_run``, ``epoch_cap``,
    ``ending`` (:data:`ENDINGS`), ``ended`` (in words) and ``converged``."""
    rows: list[dict[str, object]] = []
    problems: dict[str, list[str]] = {}  # why -> the phases it holds for
    for (_, phase), exits in zip(phases.iterrows(), trained_exits, strict=True):
        part = trace[trace["phase"] == phase["phase"]] if "phase" in trace.columns else trace.iloc[:0]
        columns = [f"val_acc_{i}" for i in exits if f"val_acc_{i}" in part.columns]
        curve = part[columns].mean(axis=1).to_numpy() if columns else np.array([])
        tolerance = noise_tolerance(float(curve.max()), val_size) if len(curve) else MIN_TOLERANCE
        ending, ended = phase_ending(curve, bool(phase["stopped_early"]), window, tolerance)
        ok = ending != "not converged"
        rows.append({"phase": phase["phase"], "epochs_run": int(phase["epochs_run"]), "epoch_cap": int(phase["epoch_cap"]),
                     "ending": ending, "ended": ended, "converged": ok})
        if not ok:
            problems.setdefault(ended, []).append(str(phase["phase"]))
    learned_ok, chance = learned(max(exit_accuracies), test_labels)
    reasons = [f"{', '.join(phases_)}: {why}" for why, phases_ in problems.items()]
    if not learned_ok:
        reasons.append(f"exits at chance (best {max(exit_accuracies):.1f}% against {chance:.1f}%)")
    converged = all(r["converged"] for r in rows)
    summary = {
        "converged": converged,
        "learned": learned_ok,
        "early_stopped": bool(phases["stopped_early"].astype(bool).all()),
        "evidence": converged and learned_ok,
        "why": "; ".join(reasons),
    }
    return summary, pd.DataFrame(rows)


def evidence_view(evidence: pd.DataFrame, by: Sequence[str] = ("row", "regime")) -> pd.DataFrame:
    """What a results page shows beside its budget table: per ``by`` group, how many runs are
    evidence (converged and above chance) and, for the others, why not (seed: reason)."""
    missing = [c for c in (*by, "seed", *EVIDENCE_COLUMNS) if c not in evidence.columns]
    if missing:
        raise ValueError(f"evidence lacks columns {missing}; it has {list(evidence.columns)}")
    records = []
    for key, group in evidence.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        failing = group[~group["evidence"].astype(bool)]
        records.append({
            **dict(zip(by, key)),
            "converged runs": f"{int(group['evidence'].sum())} of {len(group)}",
            "ended by early stopping": f"{int(group['early_stopped'].sum())} of {len(group)}",
            "not evidence": "; ".join(
                f"{', '.join(f's{int(seed)}' for seed in runs['seed'])}: {why}" for why, runs in failing.groupby("why", sort=False)
            ) or "–",
        })
    return pd.DataFrame(records).set_index(list(by))


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
