"""How runs are scored at fractions of the backbone's cost: one frozen, validated :class:`Scoring`.

Every reading of the runs (the budget table, each run's points, the readings side by side, the
curves) takes one :class:`Scoring`, checked once when it is made, so a bad option is named before
any run is read::

    from mexit.evaluate import Scoring, budget_table
    budget_table(runs, Scoring(grid="dense", pick="best", fit="val"), by=("regime",))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mexit.config import ParameterError
from mexit.evaluate.sweeps import GRIDS, RULES
from mexit.evaluate.ztw import ZTW_FINALS

# the split whose points pick each budget's operating point
FITS: tuple[str, ...] = ("test", "val")
# which operating point a budget gets: the paper's "last" affordable one or our "best" one (see budget_table)
PICKS: tuple[str, ...] = ("last", "best")
# how the runs of a group are combined: our "runs" (a point per run) or the authors' "curves" (see budget_table)
AGGREGATES: tuple[str, ...] = ("runs", "curves")
DEFAULT_BUDGETS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
_YAML_HINT = " (with papermill, pass lists as YAML: -y 'budgets: [0.5, 1.0]')"


@dataclass(frozen=True)
class Scoring:
    """How a run's operating points are made and which one each budget gets.

    ``budgets``: fractions of the backbone-only cost, each in (0, 1]; ``grid`` and ``rule``: the
    threshold sweep's (:data:`mexit.evaluate.sweeps.GRIDS`, ``RULES``); ``pick``: the paper's
    ``"last"`` affordable point or our most accurate ``"best"`` one; ``fit``: the split the points
    are picked on, ``"test"`` (as the paper) or ``"val"``; by default the one ``pick`` calls for
    (``"last"`` on test, ``"best"`` on validation: picking the best point on test is refused);
    ``aggregate``: a point per run (``"runs"``, ours) or one on the seeds' mean curve
    (``"curves"``, the authors'); ``ztw_final``: ZTW's final exit, ``"ensembled"`` (ours) or
    ``"plain"`` (the authors'). :func:`mexit.evaluate.budget_table` says what each does.
    A bad value raises :class:`~mexit.config.ParameterError` naming it and the allowed values.
    """

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    grid: str = "paper"
    rule: str = "maxprob"
    pick: str = "last"
    fit: str | None = None  # None: "val" for pick="best", else "test"
    aggregate: str = "runs"
    ztw_final: str = "ensembled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", checked_budgets(self.budgets))
        if self.fit is None:
            object.__setattr__(self, "fit", "val" if self.pick == "best" else "test")
        for name, allowed in (("grid", GRIDS), ("rule", RULES), ("pick", PICKS), ("fit", FITS),
                              ("aggregate", AGGREGATES), ("ztw_final", ZTW_FINALS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ParameterError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")
        if self.pick == "best" and self.fit == "test":
            raise ParameterError(
                "pick='best' with fit='test' picks the most accurate point on the split it reports, which is "
                "selection on test; use fit='val'"
            )


def checked_budgets(budgets: Any, name: str = "budgets") -> tuple[float, ...]:
    """Budgets as a tuple of fractions of the backbone-only cost, each in (0, 1]; raises
    :class:`~mexit.config.ParameterError` naming ``name`` (the parameter that holds them) otherwise."""
    if isinstance(budgets, np.ndarray):
        budgets = budgets.tolist()
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or len(budgets) == 0:
        raise ParameterError(f"{name} must be a non-empty list of fractions in (0, 1], got {budgets!r}{_YAML_HINT}")
    for value in budgets:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:  # nan fails too
            raise ParameterError(
                f"{name} must be fractions of the backbone cost in (0, 1], got {value!r} in {list(budgets)}"
            )
    return tuple(float(b) for b in budgets)
