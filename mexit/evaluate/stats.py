"""Summaries over seeds: mean, spread and a 95% t-interval, for single values and paired differences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # scipy.stats.t.ppf's own function, without scipy.stats' half-second import

def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean, std (ddof 1), half-width ``ci95`` of the two-sided t-interval at ``level`` (95% unless
    told: a family of claims asks for a wider one), its bounds ``low``/``high`` and ``n``.

    With fewer than two values, or any NaN, only ``mean`` and ``n`` are set; the rest are NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2 or np.isnan(values).any():
        return {"mean": mean, "std": np.nan, "ci95": np.nan, "low": np.nan, "high": np.nan, "n": n}
    std = float(values.std(ddof=1))
    half_width = float(stdtrit(n - 1, 0.5 + level / 2) * std / np.sqrt(n))
    return {"mean": mean, "std": std, "ci95": half_width, "low": mean - half_width, "high": mean + half_width, "n": n}


def format_interval(mean: float, low: float, high: float, digits: int = 1, signed: bool = False) -> str:
    """"mean [low, high]"; "mean" alone without an interval; "–" without a mean."""
    if np.isnan(mean):
        return "–"
    def number(value: float) -> str:  # a value that rounds to zero prints as 0, never "-0.0"
        return f"{{:{'+' if signed else ''}.{digits}f}}".format(0.0 if round(value, digits) == 0 else value)

    if np.isnan(low) or np.isnan(high):
        return number(mean)
    return f"{number(mean)} [{number(low)}, {number(high)}]"


def paired_differences(
    frame: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    value: str = "accuracy",
    between: str = "regime",
    pair_on: str = "seed",
    by: Sequence[str] = ("row", "budget"),
) -> pd.DataFrame:
    """``a - b`` of ``value`` for each pair of ``between`` levels, paired on ``pair_on``, per ``by`` group.

    ``frame`` is tidy: one row per (``by`` group, ``between`` level, ``pair_on`` replicate), e.g. the
    per-run points of :func:`mexit.evaluate.run_points`. Only replicates present for both levels are
    paired. One row per (group, pair): the ``by`` columns, ``pair`` (``"a - b"``), ``a``, ``b`` and
    :func:`mean_ci` of the differences (``n`` = paired replicates).
    """
    needed = [*by, between, pair_on, value]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; it has {list(frame.columns)}")
    levels = set(frame[between])
    for a, b in pairs:
        unknown = {a, b} - levels
        if unknown:
            raise ValueError(f"pairs name {between} levels {sorted(unknown)} absent from the frame: {sorted(levels)}")
    wide = frame.pivot_table(index=[*by, pair_on], columns=between, values=value, aggfunc="first", sort=False, dropna=False)
    rows = []
    for key, group in wide.groupby(level=list(range(len(by))), sort=False) if by else [((), wide)]:
        key = key if isinstance(key, tuple) else (key,)
        for a, b in pairs:
            diff = (group[a] - group[b]).dropna().to_numpy()
            rows.append({**dict(zip(by, key)), "pair": f"{a} - {b}", "a": a, "b": b, **mean_ci(diff)})
    return pd.DataFrame(rows)
