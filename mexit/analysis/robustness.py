"""Table 1's stored models on inputs unlike their test split: corrupted images (distribution
shift) and images of no class they know (out-of-distribution). Inference only, no training.

Each run is read at its own budgets' operating points, those Table 1 reads
(:func:`mexit.evaluate.run_points` under the study's scoring: under the paper's ``pick="last"``,
thresholds picked on the clean test split's costs, so the clean rows reuse the split that chose
them), as a deployed model would be: the threshold stays, and where the images leave, so what they
cost, moves with the shift. The clean rows are the run's stored test logits, never recomputed: a
number that another CPU's rounding could move across a threshold is read, not computed twice. Results are cached in the run
store per run and parameter (:meth:`mexit.store.RunStore.cached_table`): a warm rebuild recomputes
nothing.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch.utils.data import Subset

from mexit.data.loading import sample_indices
from mexit.analysis.runs import at_least, dataset_splits, inference_device, run_operating_points
from mexit.pipeline import trained_model
from mexit.config import ParameterError
from mexit.data.loading import ImageDataset
from mexit.evaluate.corruptions import CORRUPTIONS, SEVERITIES, Corruption, imagenet_c, imagenet_c_folder, perturbed
from mexit.evaluate.inference import collect_logits
from mexit.evaluate.ood import exit_ood_auroc, threshold_ood_auroc
from mexit.evaluate.ood_sets import OOD_SETS, ood_set
from mexit.evaluate.sweeps import exit_accuracy, sweep, threshold_grid
from mexit.store import Run, RunStore
from mexit.study import Study, run_label

CLEAN = "none"
"""The ``corruption`` of the clean rows of :func:`shift_table` (``severity`` 0)."""
SAMPLE_SEED = 0
"""Every run reads the same test images: drawn with this seed, not the run's."""


def _choices(name: str, values: Sequence, allowed: Sequence) -> None:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    unknown = [v for v in values if v not in allowed]
    if not values or unknown or len(set(values)) != len(values):
        raise ParameterError(f"{name} must be a list of distinct values of {tuple(allowed)}, got {values!r}")


def check_shift_parameters(corruptions: Sequence[str], severities: Sequence[int], samples: int, batch_size: int) -> None:
    """A :class:`ParameterError` naming the first bad parameter of :func:`shift_table`: a page
    calls it before its runs are loaded (or trained)."""
    _choices("corruptions", corruptions, CORRUPTIONS)
    _choices("severities", severities, SEVERITIES)
    at_least(samples=(samples, 2), batch_size=(batch_size, 1))


def check_ood_parameters(ood_sets: Sequence[str], samples: int, batch_size: int) -> None:
    """A :class:`ParameterError` naming the first bad parameter of :func:`ood_table`: a page calls
    it before its runs are loaded (or trained)."""
    _choices("ood_sets", ood_sets, OOD_SETS)
    at_least(samples=(samples, 2), batch_size=(batch_size, 1))


def _at_points(logits, labels, run: Run, mine: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, cost and exit shares of the early-exit prediction at each of ``mine``'s thresholds,
    one row per budget (NaN where no threshold fits), with the final exit's accuracy."""
    costs = run.costs
    fits = mine["operating_point"].notna()
    scored = sweep(logits, labels, costs["macs"], costs["backbone_macs"], thresholds=mine.loc[fits, "operating_point"].to_numpy())
    frame = mine.merge(scored.rename(columns={"threshold": "operating_point"}), on="operating_point", how="left")
    return frame.assign(final_accuracy=exit_accuracy(logits, labels)[-1]).drop(columns="cost_macs")


def shift_table(
    s: Study,
    points: pd.DataFrame,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    samples: int = 1000,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Every run of ``s`` on ``samples`` of its test images (the same for every run) clean and under
    each corruption at each severity (:mod:`mexit.evaluate.corruptions`; ImageNet-C's own files where
    ``data_root`` holds them, :func:`mexit.evaluate.corruptions.imagenet_c`), read at its operating points
    of ``points`` (:func:`mexit.evaluate.run_points` of ``s``'s runs). One row per (run, corruption,
    severity, budget): ``row``, ``regime``, ``seed``, ``corruption`` (``"none"`` at severity 0),
    ``severity``, ``source``, ``budget``, ``operating_point``, ``accuracy``, ``cost_pct`` (the MACs
    the shifted images cost, % of the backbone), ``exit_share_*`` and ``final_accuracy``."""
    check_shift_parameters(corruptions, severities, samples, batch_size)
    corruptions, severities = list(corruptions), list(severities)
    store, frames = RunStore(s.runs_root), []
    for row, run in s.runs():
        mine = run_operating_points(points, row, run, "maxprob")[["budget", "operating_point"]]
        config = row.config.data
        real = [(c, v) for c, v in itertools.product(corruptions, severities) if imagenet_c_folder(config, c, v)]
        options = {"runs": [run.key], "corruptions": corruptions, "severities": severities, "samples": samples,
                   "thresholds": mine["operating_point"].round(12).tolist(), "imagenet_c": [list(pair) for pair in real]}

        def compute() -> pd.DataFrame:  # called at once, inside this iteration
            print(f"[distribution shift] {run_label(row, run.config)}", file=sys.stderr, flush=True)
            stored, stored_labels = run.logits("test"), run.labels("test")
            chosen = sample_indices(len(stored_labels), samples, SAMPLE_SEED).tolist()
            clean = _at_points(stored[:, chosen], stored_labels[chosen], run, mine)
            frames_of_run = [clean.assign(corruption=CLEAN, severity=0, source="clean")]
            model, test = trained_model(run, inference_device()), dataset_splits(config).test
            for corruption, severity in itertools.product(corruptions, severities):
                files = imagenet_c(config, corruption, severity)
                images: ImageDataset = files or perturbed(test, Corruption(corruption, severity))
                picked = sample_indices(len(images), samples, SAMPLE_SEED).tolist() if files else chosen
                logits, labels = collect_logits(model, Subset(images, picked), batch_size, inference_device())
                source = "ImageNet-C files" if files else "generated"
                frames_of_run.append(_at_points(logits, labels, run, mine).assign(corruption=corruption, severity=severity, source=source))
            return pd.concat(frames_of_run, ignore_index=True)

        table = store.cached_table("distribution_shift", options, compute, code=__name__)
        frames.append(table.assign(row=row.label, regime=run.config.train.regime, seed=run.config.train.seed))
    frame = pd.concat(frames, ignore_index=True)
    first = ["row", "regime", "seed", "corruption", "severity", "source", "budget", "operating_point", "accuracy", "cost_pct"]
    return frame[[*first, *[c for c in frame.columns if c not in first]]]


def severity_means(shift: pd.DataFrame, budget: float | None = None) -> pd.DataFrame:
    """:func:`shift_table` averaged over the corruptions, at one ``budget`` (None: each): one row
    per (row, regime, seed, budget, severity) with ``accuracy`` and ``cost_pct``; severity 0 is the
    clean images."""
    if budget is not None:
        if budget not in set(shift["budget"]):
            raise ParameterError(f"budget must be one of the table's budgets {sorted(shift['budget'].unique())}, got {budget!r}")
        shift = shift[shift["budget"] == budget]
    keys = ["row", "regime", "seed", "budget", "severity"]
    return shift.groupby(keys, as_index=False, sort=False)[["accuracy", "cost_pct"]].mean()


def rows_without_point(means: pd.DataFrame, value: str = "cost_pct") -> list[str]:
    """The rows of :func:`severity_means` at one budget whose runs have no operating point there
    (``value`` missing for every regime, seed and severity: the first exit costs more than the
    budget), in the table's order: a panel of theirs would be empty."""
    empty = means.groupby("row", sort=False)[value].apply(lambda column: bool(column.isna().all()))
    return [str(row) for row, is_empty in empty.items() if is_empty]


def ood_table(
    s: Study,
    points: pd.DataFrame,
    ood_sets: Sequence[str] = ("gaussian-noise", "photo-patches"),
    samples: int = 1000,
    ood_root: str | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Every run of ``s`` telling its test split (every image, from the stored logits) from
    ``samples`` images of each of ``ood_sets`` (:mod:`mexit.evaluate.ood_sets`; a dataset read from
    ``ood_root``, None: the row's ``data_root``) by the maximum softmax (:mod:`mexit.evaluate.ood`).
    One long table, ``view`` telling its rows apart: ``"exit"`` (one row per exit: ``exit``,
    ``cost_pct``), ``"threshold"`` (one per threshold of the study's grid) and ``"budget"`` (one per
    budget's operating point of ``points``: ``budget``); each with ``ood_auroc`` (%), and along the
    thresholds ``id_cost_pct`` and ``ood_cost_pct``. Tagged ``row``, ``regime``, ``seed``, ``ood_set``."""
    check_ood_parameters(ood_sets, samples, batch_size)
    store, frames = RunStore(s.runs_root), []
    grid = threshold_grid(s.scoring.grid)
    for row, run in s.runs():
        mine = run_operating_points(points, row, run, "maxprob")[["budget", "operating_point"]]
        model = functools.cache(lambda run=run: trained_model(run, inference_device()))  # loaded once a run, where a set is not cached
        for name in ood_sets:
            options = {"runs": [run.key], "ood_set": name, "samples": samples, "ood_root": ood_root,
                       "thresholds": mine["operating_point"].round(12).tolist(), "grid": s.scoring.grid}

            def compute() -> pd.DataFrame:  # called at once, inside this iteration
                print(f"[out of distribution: {name}] {run_label(row, run.config)}", file=sys.stderr, flush=True)
                foreign = ood_set(name, row.config.data, samples, ood_root)
                ood_logits, _ = collect_logits(model(), foreign, batch_size, inference_device())
                return _ood_views(run, ood_logits.numpy(), grid, mine)

            table = store.cached_table("out_of_distribution", options, compute, code=__name__)
            frames.append(table.assign(row=row.label, regime=run.config.train.regime, seed=run.config.train.seed, ood_set=name))
    frame = pd.concat(frames, ignore_index=True)
    first = ["row", "regime", "seed", "ood_set", "view"]
    return frame[[*first, *[c for c in frame.columns if c not in first]]]


def _ood_views(run: Run, ood_logits: np.ndarray, grid: np.ndarray, mine: pd.DataFrame) -> pd.DataFrame:
    id_logits, costs = run.logits("test").numpy(), run.costs
    macs, backbone = np.asarray(costs["macs"], dtype=float), float(costs["backbone_macs"])
    exits = pd.DataFrame({"exit": np.arange(len(macs)), "cost_pct": 100 * macs / backbone, "ood_auroc": exit_ood_auroc(id_logits, ood_logits)})
    along = threshold_ood_auroc(id_logits, ood_logits, macs, backbone, grid)
    fits = mine[mine["operating_point"].notna()]
    at_budgets = threshold_ood_auroc(id_logits, ood_logits, macs, backbone, fits["operating_point"].tolist())
    at_budgets = at_budgets.assign(budget=fits["budget"].to_numpy())
    return pd.concat([exits.assign(view="exit"), along.assign(view="threshold"), at_budgets.assign(view="budget")], ignore_index=True)
