"""An effect's trend across the sizes of one model family (the scaling page; the definition is ours).

Each size is a row of a study (one backbone of the family on one dataset) and each seed trains every
size once, so that a seed gives one effect per size. A seed's trend is the slope of the least-squares
line through its effects against log2 of each size's backbone MACs: the change of the effect, in its
own unit, per doubling of the model's cost. Seeds are independent replicates of that slope, so its
mean and t-interval over seeds decide a claim about the trend as any other effect's do
(:mod:`mexit.claims`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd


def has_trend(sizes: Iterable[str], macs: Mapping[str, float]) -> bool:
    """Whether ``sizes`` span a trend: at least two of them of different MACs."""
    return len({float(macs[size]) for size in sizes}) >= 2


def per_doubling_slopes(effects: Mapping[str, pd.Series], macs: Mapping[str, float]) -> pd.Series:
    """Per seed, the slope of its effect against log2 of the backbone's MACs over the sizes:
    ``effects`` maps each size (a row's label) to its per-seed effects (a series indexed by seed),
    ``macs`` each size to its backbone's MACs. Only seeds with an effect at every size enter; the
    series is indexed by seed, named ``slope``. Needs at least two sizes of different MACs."""
    missing = sorted(set(effects) - set(macs))
    if missing:
        raise ValueError(f"no MACs for the sizes {missing}; macs has {sorted(macs)}")
    sizes = list(effects)
    if not has_trend(sizes, macs):
        raise ValueError(f"a trend needs at least two sizes of different MACs, got {dict((s, macs[s]) for s in sizes)}")
    log_macs = np.log2(np.array([float(macs[size]) for size in sizes]))
    table = pd.concat({size: effects[size] for size in sizes}, axis=1).dropna()
    centred = log_macs - log_macs.mean()
    slopes = (table.to_numpy() - table.to_numpy().mean(axis=1, keepdims=True)) @ centred / float(centred @ centred)
    return pd.Series(slopes, index=table.index.astype(int), name="slope")


def size_effects(effects: Mapping[str, pd.Series], macs: Mapping[str, float]) -> pd.DataFrame:
    """The effects :func:`per_doubling_slopes` reads, one line per size and seed: ``row``, ``macs``
    and ``seed``, ``effect`` (what the scaling page plots)."""
    return pd.DataFrame(
        [{"row": size, "macs": float(macs[size]), "seed": int(seed), "effect": float(value)}
         for size, series in effects.items() for seed, value in series.dropna().items()],
        columns=["row", "macs", "seed", "effect"],
    )
