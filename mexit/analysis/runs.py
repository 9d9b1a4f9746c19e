"""The four analyses over a book study's stored runs: tagged tables, each computed once and cached.

Every function takes a checked :class:`mexit.study.Study` (the runs Table 1 compares: rows x
regimes x seeds), loads or trains its runs through the run store, and returns one long table with
``row``, ``regime`` (or ``pair``) and ``seed`` columns. Heavy results (paths, planes, ranks,
mutual information) are kept in the run store (:meth:`mexit.store.RunStore.cached_table`), keyed by
the runs they read and every parameter, so a warm rebuild of the book recomputes nothing; while
computing they report progress on stderr.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mexit import data
from mexit.analysis.connectivity import barrier, bezier_path, linear_path, loss_plane, plane_anchors
from mexit.data.loading import sample_indices
from mexit.analysis.mutual_info import block_mutual_information
from mexit.analysis.rank import block_ranks
from mexit.claims import depth_thirds, pair_label
from mexit.config import RunConfig
from mexit.evaluate.stats import format_interval, mean_ci
from mexit.pipeline import train_or_load, trained_model
from mexit.store import Run, RunStore
from mexit.study import ParameterError, Row, Study, chosen_seeds, equilibrium_configs, run_label

CONNECTIVITY_PAIRS: tuple[tuple[str, str], ...] = (("disjoint", "mixed"), ("joint", "mixed"), ("disjoint", "joint"))
PATHS: tuple[str, ...] = ("linear", "bezier")


# ------------------------------------------------------------------ gradient dominance

def check_probed(s: Study) -> None:
    """Stop with a :class:`ParameterError` naming every row whose runs record no gradient probes."""
    unprobed = [row.label for row in s.rows if row.config.train.dominance_every < 1]
    if unprobed:
        raise ParameterError(
            f"rows {unprobed} record no gradient dominance: give each row's config train.dominance_every "
            "> 0 (in the config or as an override 'train.dominance_every=50'); it is part of the run key"
        )


def dominance_traces(s: Study) -> pd.DataFrame:
    """Every probe recorded while P2 trained (joint and mixed runs), tagged ``row``, ``regime`` and
    ``seed``: one row per (step, block, exit), as :func:`mexit.analysis.gradient_dominance`, with
    ``kept_step`` (:func:`p2_probes`)."""
    check_probed(s)
    frames = [
        p2_probes(run, row=row.label, regime=run.config.train.regime, seed=run.config.train.seed)
        for row, run in s.runs()
        if "P2" in run.config.train.phase_list
    ]
    if not frames:
        raise ParameterError(f"regimes {list(s.regimes)} train no P2 (joint or mixed): there is no gradient dominance to show")
    return pd.concat(frames, ignore_index=True)


def equilibrium_traces(s: Study, seeds: list[int] | None = None) -> pd.DataFrame:
    """:func:`dominance_traces` of joint runs trained with gradient equilibrium (Li et al., 2019),
    one per row and seed in ``seeds`` (default: all of the study's;
    :func:`mexit.study.equilibrium_configs`, which the book trains before its notebooks), tagged
    ``regime="joint + GE"``."""
    check_probed(s)
    store = RunStore(s.runs_root)
    frames = []
    for row, config in equilibrium_configs(s, seeds):
        run = train_or_load(store, config, progress_label=f"{run_label(row, config)}GE ")
        frames.append(p2_probes(run, row=row.label, regime="joint + GE", seed=config.train.seed))
    return pd.concat(frames, ignore_index=True)


def p2_probes(run: Run, **tags: Any) -> pd.DataFrame:
    """``run``'s probes tagged with ``tags`` and ``kept_step``: the step of the P2 state the run
    kept (its best state where early stopping restored one, else its last), which the stored
    model, and so every other analysis, is."""
    phases = run.phases()
    kept = int(phases.loc[phases["phase"] == "P2", "best_step"].iloc[0])
    return run.probes().assign(**tags, kept_step=kept)


def dominance_at(traces: pd.DataFrame, when: str) -> pd.DataFrame:
    """The probes of each run at the ``"start"`` of P2 (step 0) or its ``"end"``: the last probe at
    or before the state the run kept (``kept_step``, :func:`p2_probes`), so that the end describes
    the stored model the other analyses read, not the steps early stopping discarded after it."""
    if when not in ("start", "end"):
        raise ValueError(f"when must be 'start' or 'end', got {when!r}")
    if when == "end" and "kept_step" not in traces.columns:
        raise ValueError(f"traces lack kept_step (build them with dominance_traces); they have {list(traces.columns)}")
    keys = ["row", "regime", "seed"]
    if when == "start":
        step = traces.groupby(keys)["step"].transform("min")
    else:
        last = traces[traces["step"] <= traces["kept_step"]].groupby(keys)["step"].max().rename("at")
        step = traces.join(last, on=keys)["at"]
    return traces[traces["step"] == step].reset_index(drop=True)


def middle_final_shares(end: pd.DataFrame) -> pd.DataFrame:
    """The final head's share of each middle block's gradient (the middle third of each row's
    blocks, :func:`mexit.claims.depth_thirds`): the rows of ``end`` (probes of one moment) for the
    final head at those blocks."""
    blocks = end.groupby("row")["exit_block"].transform("max")
    middle = [block in depth_thirds(int(depth))[1] for block, depth in zip(end["block"], blocks)]
    return end[pd.Series(middle, index=end.index) & (end["exit_block"] == blocks)].reset_index(drop=True)


# ------------------------------------------------------------------ mode connectivity

def connectivity_pairs(s: Study) -> list[tuple[str, str]]:
    """The regime pairs the study's regimes allow, from :data:`CONNECTIVITY_PAIRS`."""
    return [(a, b) for a, b in CONNECTIVITY_PAIRS if a in s.regimes and b in s.regimes]


def connectivity_paths(
    s: Study,
    path: str = "linear",
    seeds: list[int] | None = None,
    points: int = 21,
    bn_batches: int = 10,
    eval_samples: int | None = None,
    bezier_steps: int = 200,
    bezier_lr: float = 1e-3,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Every exit's loss and accuracy along the ``path`` (linear or bezier) between each pair of
    regimes' solutions of each seed in ``seeds`` (default: all of the study's).

    Evaluation is on the test split (its seeded sample of ``eval_samples``; None: all of it);
    BatchNorm statistics come from ``bn_batches`` batches of the training images (eval transforms).
    Columns: row, seed, pair, regime_a, regime_b, path, alpha, exit, loss, accuracy.
    """
    if path not in PATHS:
        raise ParameterError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    at_least(points=(points, 2), bn_batches=(bn_batches, 1), batch_size=(batch_size, 1), bezier_steps=(bezier_steps, 0))
    optional_at_least(eval_samples=(eval_samples, 2))
    if not (isinstance(bezier_lr, (int, float)) and bezier_lr > 0):
        raise ParameterError(f"bezier_lr must be a number > 0, got {bezier_lr!r}")
    chosen = chosen_seeds(s, seeds)
    pairs = connectivity_pairs(s)
    if not pairs:
        raise ParameterError(f"regimes {list(s.regimes)} give no pair of solutions to connect")
    store = RunStore(s.runs_root)
    runs = _runs_by_regime(s)
    options: dict[str, Any] = {"points": points, "bn_batches": bn_batches, "batch_size": batch_size, "eval_samples": eval_samples}
    walk: Callable[..., pd.DataFrame] = linear_path
    if path == "bezier":
        options.update(steps=bezier_steps, lr=bezier_lr)
        walk = functools.partial(bezier_path, steps=bezier_steps, lr=bezier_lr)
    frames = []
    for row in s.rows:
        for seed in chosen:
            for a, b in pairs:
                table = _path_between(store, row, runs[(row.label, a, seed)], runs[(row.label, b, seed)], seed, path, walk, options, pair_label(a, b))
                frames.append(table.assign(row=row.label, seed=seed, pair=pair_label(a, b), regime_a=a, regime_b=b, path=path))
    return pd.concat(frames, ignore_index=True)[list(PATH_COLUMNS)]


PATH_COLUMNS: tuple[str, ...] = ("row", "seed", "pair", "regime_a", "regime_b", "path", "alpha", "exit", "loss", "accuracy")


def seed_pair_paths(
    s: Study,
    regimes: Sequence[str] = ("joint", "mixed"),
    points: int = 21,
    bn_batches: int = 10,
    eval_samples: int | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """A same-regime control: the linear path between two seeds of the same regime (each seed and
    the next of the study's, for each of ``regimes`` it trains), read as :func:`connectivity_paths`
    reads a pair of regimes. Two runs of one regime share nothing but their recipe (other
    initialisations, unaligned neurons), so their barrier is that of independent solutions, not
    the size of one basin. ``pair`` is
    :func:`seed_pair_label`; ``seed`` the first of the two, whose data sample is used."""
    at_least(points=(points, 2), bn_batches=(bn_batches, 1), batch_size=(batch_size, 1))
    optional_at_least(eval_samples=(eval_samples, 2))
    if len(s.seeds) < 2:
        raise ParameterError(f"seeds must hold two or more seeds to join two runs of one regime, got {list(s.seeds)}")
    joined = [r for r in regimes if r in s.regimes]
    if not joined:
        raise ParameterError(f"regimes {list(regimes)}: the study trains none of them ({list(s.regimes)})")
    store = RunStore(s.runs_root)
    runs = _runs_by_regime(s)
    options: dict[str, Any] = {"points": points, "bn_batches": bn_batches, "batch_size": batch_size, "eval_samples": eval_samples}
    frames = []
    for row in s.rows:
        for regime in joined:
            label = seed_pair_label(regime)
            for first, second in zip(s.seeds, s.seeds[1:]):
                table = _path_between(store, row, runs[(row.label, regime, first)], runs[(row.label, regime, second)], first,
                                      "linear", linear_path, options, f"{regime} s{first} - s{second}")
                frames.append(table.assign(row=row.label, seed=first, pair=label, regime_a=regime, regime_b=regime, path="linear"))
    return pd.concat(frames, ignore_index=True)[list(PATH_COLUMNS)]


def seed_pair_label(regime: str) -> str:
    """The ``pair`` of :func:`seed_pair_paths`' paths between two seeds of ``regime``."""
    return f"{pair_label(regime, regime)} (two seeds)"


def _path_between(
    store: RunStore, row: Row, run_a: Run, run_b: Run, seed: int, path: str, walk: Callable[..., pd.DataFrame],
    options: Mapping[str, Any], label: str,
) -> pd.DataFrame:
    """The ``path`` from ``run_a``'s weights to ``run_b``'s (cached in the store by both runs' keys
    and the ``options``), on ``row``'s data with ``seed``'s sample."""

    def compute() -> pd.DataFrame:
        train_set, eval_set = _connectivity_data(row.config, options["eval_samples"], seed)
        return walk(
            trained_model(run_a, inference_device()), trained_model(run_b, inference_device()), train_set, eval_set, points=options["points"],
            bn_batches=options["bn_batches"], batch_size=options["batch_size"], seed=seed,
            progress_label=f"{path} {row.label} s{seed} {label}",
        )

    return store.cached_table(f"{path}_path", {"runs": [run_a.key, run_b.key], **options}, compute, code=__name__)


def barrier_table(paths: pd.DataFrame) -> pd.DataFrame:
    """:func:`mexit.analysis.barrier` of every path of :func:`connectivity_paths`, tagged row,
    seed, pair and path: one row per (row, seed, pair, path, exit)."""
    keys = ["row", "seed", "pair", "path"]
    frames = [
        barrier(curve[["alpha", "exit", "loss", "accuracy"]]).assign(**dict(zip(keys, values)))
        for values, curve in paths.groupby(keys, sort=False)
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[[*keys, *[c for c in table.columns if c not in keys]]]


def barrier_summary(barriers: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The barriers of :func:`barrier_table` as the book shows them: per row, pair and path, the
    final exit's and the exits' mean loss barrier (nats) and error barrier (points), each "mean
    [95% CI]" over seeds."""
    keys = ["row", "pair", "path"]
    last = barriers.groupby("row")["exit"].transform("max")
    final = barriers[barriers["exit"] == last].assign(exits="final exit")
    mean = barriers.groupby([*keys, "seed"], sort=False)[["loss_barrier", "error_barrier"]].mean().reset_index()
    rows = []
    for values, frame in pd.concat([final, mean.assign(exits="mean of exits")]).groupby([*keys, "exits"], sort=False):
        record: dict[str, Any] = {**dict(zip([*keys, "exits"], values)), "seeds": len(frame)}
        for column, unit in (("loss_barrier", "loss barrier (nats)"), ("error_barrier", "error barrier (points)")):
            summary = mean_ci(frame[column].tolist())
            record[unit] = format_interval(summary["mean"], summary["low"], summary["high"], digits)
        rows.append(record)
    return pd.DataFrame(rows).set_index([*keys, "exits"])


def connectivity_plane(
    s: Study,
    seed: int,
    points: int = 21,
    margin: float = 0.25,
    bn_batches: int = 10,
    eval_samples: int | None = None,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The loss plane (:func:`mexit.analysis.loss_plane`) through the three regimes' solutions of
    ``seed``, per row: the grid (columns row, u, v, exit, loss, accuracy) and where each regime lies
    in it (columns row, regime, u, v). Needs the three regimes, in the study's order."""
    if len(s.regimes) != 3:
        raise ParameterError(f"regimes must be three to span a plane, got {list(s.regimes)}")
    at_least(points=(points, 2), bn_batches=(bn_batches, 1), batch_size=(batch_size, 1))
    optional_at_least(eval_samples=(eval_samples, 2))
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ParameterError(f"margin must be a number >= 0, got {margin!r}")
    (chosen,) = chosen_seeds(s, [seed])
    store = RunStore(s.runs_root)
    runs = _runs_by_regime(s)
    options = {"points": points, "margin": margin, "bn_batches": bn_batches, "batch_size": batch_size, "eval_samples": eval_samples}
    grids, anchors = [], []
    for row in s.rows:
        trio = [runs[(row.label, regime, chosen)] for regime in s.regimes]

        def compute() -> pd.DataFrame:  # called at once, inside this iteration
            train_set, eval_set = _connectivity_data(row.config, eval_samples, chosen)
            device = inference_device()
            return loss_plane(
                [trained_model(run, device) for run in trio], train_set, eval_set, points=points, margin=margin,
                bn_batches=bn_batches, batch_size=batch_size, seed=chosen, progress_label=f"plane {row.label} s{chosen}",
            )

        grid = store.cached_table("loss_plane", {"runs": [run.key for run in trio], **options}, compute, code=__name__)
        grids.append(grid.assign(row=row.label))
        where = plane_anchors([trained_model(run) for run in trio])
        anchors.append(where.assign(row=row.label, regime=[s.regimes[i] for i in where["model"]]))
    return (
        pd.concat(grids, ignore_index=True)[["row", "u", "v", "exit", "loss", "accuracy"]],
        pd.concat(anchors, ignore_index=True)[["row", "regime", "u", "v"]],
    )


# ------------------------------------------------------------------ representations

def rank_table(
    s: Study, samples: int = 1000, eig_threshold: float = 1e-3, max_features: int | None = None, batch_size: int = 256
) -> pd.DataFrame:
    """:func:`mexit.analysis.block_ranks` of every run on its test split, tagged row, regime, seed,
    with ``rank_pct``: the rank in % of the largest the measurement allows (``max_rank``)."""
    at_least(samples=(samples, 2), batch_size=(batch_size, 1))
    optional_at_least(max_features=(max_features, 1))
    if not (isinstance(eig_threshold, float) and 0 < eig_threshold < 1):
        raise ParameterError(f"eig_threshold must be a number in (0, 1), got {eig_threshold!r}")
    options = {"samples": samples, "eig_threshold": eig_threshold, "max_features": max_features}
    ranks = _per_run(
        s, "rank", options,
        lambda model, test, seed: block_ranks(model, test, samples, eig_threshold, max_features, seed, batch_size),
    )
    return ranks.assign(rank_pct=100 * ranks["rank"] / ranks["max_rank"])


def information_table(
    s: Study,
    samples: int = 1000,
    max_features: int | None = 4096,
    probe_dim: int = 64,
    noise_ratio: float = 0.1,
    batch_size: int = 256,
) -> pd.DataFrame:
    """:func:`mexit.analysis.block_mutual_information` of every run on its test split, tagged row,
    regime, seed."""
    at_least(samples=(samples, 2), probe_dim=(probe_dim, 1), batch_size=(batch_size, 1))
    optional_at_least(max_features=(max_features, 1))
    if not (isinstance(noise_ratio, (int, float)) and noise_ratio > 0):
        raise ParameterError(f"noise_ratio must be a number > 0, got {noise_ratio!r}")
    options = {"samples": samples, "max_features": max_features, "probe_dim": probe_dim, "noise_ratio": noise_ratio}
    return _per_run(
        s, "mutual_information", options,
        lambda model, test, seed: block_mutual_information(
            model, test, samples, max_features, seed, probe_dim=probe_dim, noise_ratio=noise_ratio, batch_size=batch_size
        ),
    )


# ------------------------------------------------------------------ shared pieces

def _per_run(
    s: Study, kind: str, options: dict[str, Any], measure: Callable[[nn.Module, Dataset, int], pd.DataFrame]
) -> pd.DataFrame:
    store = RunStore(s.runs_root)
    frames = []
    for row, run in s.runs():
        seed = run.config.train.seed

        def compute() -> pd.DataFrame:  # called at once, inside this iteration
            print(f"[{kind}] {run_label(row, run.config)}", file=sys.stderr, flush=True)
            return measure(trained_model(run, inference_device()), dataset_splits(row.config.data).test, seed)

        table = store.cached_table(kind, {"runs": [run.key], **options}, compute, code=__name__)
        frames.append(table.assign(row=row.label, regime=run.config.train.regime, seed=seed))
    return pd.concat(frames, ignore_index=True)


def at_least(**values: tuple[Any, int]) -> None:
    """Each ``name=(value, least)``: an integer >= least, or a :class:`ParameterError` naming it."""
    for name, (value, least) in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ParameterError(f"{name} must be an integer >= {least}, got {value!r}")


def optional_at_least(**values: tuple[Any, int]) -> None:
    at_least(**{name: (value, least) for name, (value, least) in values.items() if value is not None})


def _runs_by_regime(s: Study) -> dict[tuple[str, str, int], Run]:
    return {(row.label, run.config.train.regime, run.config.train.seed): run for row, run in s.runs()}


def _connectivity_data(config: RunConfig, eval_samples: int | None, seed: int) -> tuple[Dataset, Dataset]:
    splits = dataset_splits(config.data)
    test: Dataset = splits.test
    if eval_samples is not None:
        test = Subset(splits.test, sample_indices(len(splits.test), eval_samples, seed).tolist())
    return splits.train_eval, test


@functools.cache
def dataset_splits(config: data.DataConfig) -> data.Splits:
    return data.load(config)


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_operating_points(points: pd.DataFrame, row: Row, run: Run, rule: str) -> pd.DataFrame:
    """The rows of ``points`` (:func:`mexit.evaluate.run_points` of a study's runs) that are
    ``run``'s, one per budget (``operating_point`` NaN where none fits), for a consumer that applies
    them under exit ``rule``; a :class:`ParameterError` unless they are thresholds (PBEE's patience
    and ZTW's ensemble have none to apply) picked under that same rule (a threshold of the entropy
    rule means nothing to the maximum softmax)."""
    train = run.config.train
    mine = points[(points["row"] == row.label) & (points["regime"] == train.regime) & (points["seed"] == train.seed)]
    if set(mine["evaluation"]) - {"threshold"}:
        raise ParameterError("these pages read threshold-scored runs only (not PBEE's patience or ZTW's ensemble)")
    picked = set(mine["rule"]) if "rule" in mine.columns else {None}
    if picked != {rule}:
        raise ParameterError(
            f"the operating points were picked under the exit rule {sorted(map(str, picked))}, but this page applies them "
            f"under {rule!r}: pick them with Scoring(rule={rule!r})"
        )
    return mine.reset_index(drop=True)


TIMED_RULE = "maxprob"
"""The exit rule real early exit is timed under (:meth:`mexit.models.MultiExit.early_exit`), and so
the rule the operating points it reads must have been picked under."""


def wall_clock_table(
    s: Study, points: pd.DataFrame, seeds: list[int] | None = None, samples: int = 1000, batch_size: int = 256, repeats: int = 3
) -> pd.DataFrame:
    """Real early exit timed on this machine (:func:`mexit.evaluate.timing.time_early_exit`) at each
    budget's operating point of ``points`` (:func:`mexit.evaluate.run_points` of ``s``'s runs), on
    ``samples`` test images, for the runs of ``seeds`` (None: the study's first): one row per (run,
    budget) with ``threshold``, ``cost_pct`` (the MACs' prediction, % of the backbone),
    ``ms_per_image`` and ``time_pct`` (% of the backbone alone on the same images). Never cached:
    timings belong to the machine that reads the page."""
    from mexit.evaluate.timing import time_early_exit

    at_least(samples=(samples, 1), batch_size=(batch_size, 1), repeats=(repeats, 1))
    chosen = chosen_seeds(s, seeds or list(s.seeds[:1]))
    frames = []
    for row, run in s.runs():
        seed, regime = run.config.train.seed, run.config.train.regime
        if seed not in chosen:
            continue
        mine = run_operating_points(points, row, run, TIMED_RULE).dropna(subset=["operating_point"])
        test = dataset_splits(row.config.data).test
        device = inference_device()
        images = torch.stack([test[i][0] for i in range(min(samples, len(test)))]).to(device)
        print(f"[wall clock] {run_label(row, run.config)}", file=sys.stderr, flush=True)
        thresholds = mine["operating_point"].tolist()
        timed = time_early_exit(trained_model(run, device), images, thresholds, batch_size=batch_size, repeats=repeats, rule=TIMED_RULE)
        budgets = [float("nan"), *mine["budget"]]
        predicted = [100.0, *mine["cost_pct"]]
        frames.append(timed.assign(budget=budgets, cost_pct=predicted, row=row.label, regime=regime, seed=seed))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["row", "regime", "seed", "budget", "threshold", "cost_pct", "ms_per_image", "time_pct"]]
