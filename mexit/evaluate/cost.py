"""Training cost from the stored phase records: per regime, and with shared phases counted once.

Input: one row per (run, phase) with the run's tags, ``phase``, ``phase_key``, ``wall_time_s``,
``epochs_run``, ``steps`` and ``train_macs`` (:meth:`mexit.study.Study.phase_costs`). Disjoint and
mixed runs of one seed share their P1 (same ``phase_key``): :func:`regime_cost` charges it to each
regime that uses it; :func:`shared_cost` counts each stored phase once.

Training MACs (ours, a machine-independent cost): a training step runs the forward of the exits its
phase computes (the backbone and its final head alone in P1, which computes no IC; every exit in P2
and P3) and a backward of about twice the forward MACs of the modules the gradient flows through
(one product for the input gradients, one for the weight gradients: the rule behind the "6 N per
token" estimate of Kaplan et al., 2020, "Scaling Laws for Neural Language Models", Sec. 2.1). The
gradient flows through the backbone alone in P1 (only the final head's loss), through everything in
P2, and through the ICs alone in P3 (the backbone is frozen and nothing before an IC needs a
gradient). Element-wise work, the optimiser's update and validation are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

COST_COLUMNS: tuple[str, ...] = ("wall_time_s", "epochs_run", "steps", "train_macs")


def training_macs_per_sample(phase: str, exit_macs: Sequence[int], backbone_macs: int) -> int:
    """The MACs one training sample costs in ``phase`` (``P1``, ``P2`` or ``P3``; see the module
    docstring): the forward of what the phase computes (the backbone's ``backbone_macs`` in P1, every
    exit's ``exit_macs[-1]``, cumulative, in P2 and P3) plus twice the MACs of the modules its
    gradient flows through (the backbone, the ICs the rest)."""
    every_exit = int(exit_macs[-1])
    ics = every_exit - int(backbone_macs)
    if ics < 0 or backbone_macs < 1:
        raise ValueError(f"exit_macs[-1] ({every_exit}) must be at least backbone_macs ({backbone_macs}) >= 1")
    forward_backward = {"P1": (backbone_macs, backbone_macs), "P2": (every_exit, every_exit), "P3": (every_exit, ics)}
    if phase not in forward_backward:
        raise ValueError(f"phase must be one of {sorted(forward_backward)}, got {phase!r}")
    forward, backward = forward_backward[phase]
    return int(forward) + 2 * int(backward)


def regime_cost(phases: pd.DataFrame, by: Sequence[str] = ("row", "regime", "seed")) -> pd.DataFrame:
    """Each run's total wall time, epochs, optimiser steps and training MACs, every phase it uses
    counted."""
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
