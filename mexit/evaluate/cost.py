"""Training cost from the stored phase records: per regime, and with shared phases counted once.

Input: one row per (run, phase) with the run's tags, ``phase``, ``phase_key``, ``wall_time_s``,
``epochs_run`` and ``steps`` (:meth:`mexit.study.Study.phase_costs`). Disjoint and mixed runs of one
seed share their P1 (same ``phase_key``): :func:`regime_cost` charges it to each regime that uses
it; :func:`shared_cost` counts each stored phase once.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

COST_COLUMNS: tuple[str, ...] = ("wall_time_s", "epochs_run", "steps")


def regime_cost(phases: pd.DataFrame, by: Sequence[str] = ("row", "regime", "seed")) -> pd.DataFrame:
    """Each run's total wall time, epochs and optimiser steps, every phase it uses counted."""
    _check(phases, by)
    return phases.groupby(list(by), sort=False, as_index=False)[list(COST_COLUMNS)].sum()


def shared_cost(phases: pd.DataFrame, by: Sequence[str] = ("row", "seed")) -> pd.DataFrame:
    """Per ``by`` group: the cost of all its runs counted per regime (``*_per_regime``) and with
    each shared phase counted once (``*_once``)."""
    _check(phases, by)
    per_regime = phases.groupby(list(by), sort=False)[list(COST_COLUMNS)].sum()
    once = phases.drop_duplicates([*by, "phase_key"]).groupby(list(by), sort=False)[list(COST_COLUMNS)].sum()
    return per_regime.add_suffix("_per_regime").join(once.add_suffix("_once")).reset_index()


def cost_ratio(costs: pd.DataFrame, a: str, b: str, value: str = "wall_time_s") -> pd.Series:
    """``value`` of regime ``a`` over regime ``b`` per (row, seed), from :func:`regime_cost`;
    empty when either regime is absent."""
    wide = costs.pivot_table(index=["row", "seed"], columns="regime", values=value, aggfunc="first")
    if not {a, b} <= set(wide.columns):
        return pd.Series(dtype=float)
    return (wide[a] / wide[b]).dropna()


def _check(phases: pd.DataFrame, by: Sequence[str]) -> None:
    missing = [c for c in (*by, "phase_key", *COST_COLUMNS) if c not in phases.columns]
    if missing:
        raise ValueError(f"phases lacks columns {missing}; it has {list(phases.columns)}")
