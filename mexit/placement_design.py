"""Budget-tuned IC placements (open question 4 of the paper's summary: how many internal
classifiers, and where, for a target budget).

Per regime, a *dense* model (the study's row, an IC after every block at the quick profile) is
trained; from its exits, the subset of ICs with the highest validation accuracy at each target
budget is chosen (:func:`choose_placements`: every subset where the dense model has at most
:data:`MAX_EXHAUSTIVE_ICS` ICs, else a greedy forward search); each chosen placement is then
retrained as its own multi-exit model (:func:`design_study`), so that a page can tell whether a
placement picked from a dense model keeps its accuracy when trained alone. Joint and mixed ICs
shape the backbone, so it need not.

A subset's costs come from the dense model's without training anything: leaving at a kept IC
costs the backbone up to its block plus every kept IC's head on the way (:func:`subset_costs`,
from the dense model's cumulative costs and each IC's own head MACs, :func:`head_macs`). Only
SDN's independent ICs can be read as a subset (other methods' ICs read their neighbours).

Everything is read as ``Scoring(pick="best")``: each run's operating point at a budget is its most
accurate one on the validation split, reported on test; the selection reads validation only.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mexit.config import ParameterError, RunConfig
from mexit.evaluate import ExitOutputs, run_points
from mexit.evaluate.tables import group_runs
from mexit.evaluate.scoring import Scoring, checked_budgets
from mexit.evaluate.sweeps import sweep

MAX_EXHAUSTIVE_ICS = 10
"""The most ICs a dense model may have for every subset of them to be tried (2^10 subsets); above
it, the search is greedy."""
DENSE = "every block (dense)"
"""The variant label of the dense runs, on the page and in the evidence."""
CHOICE_COLUMNS: tuple[str, ...] = ("regime", "budget", "placement", "ics", "val_accuracy", "search")
READING_COLUMNS: list[str] = ["row", "regime", "seed", "chosen_by", "budget", "accuracy", "cost_pct"]
"""A reading of runs at a budget (:func:`dense_readings`, :func:`retrained_readings`)."""


def placement_blocks(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """The 1-based blocks ``config``'s ICs read (its placement resolved on its backbone, built on the meta device)."""
    import torch

    from mexit.models import build_model

    with torch.device("meta"):
        return tuple(build_model(config, tuple(int(s) for s in input_shape), num_classes).placement)


def head_macs(config: RunConfig, input_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """The MACs of each IC of ``config``'s placement on its own (its head, on one input): a model
    with that IC alone costs, to its final exit, the plain backbone plus the head."""
    from mexit.flops import exit_costs
    from mexit.models import build_model

    shape = tuple(int(s) for s in input_shape)
    heads = []
    for block in placement_blocks(config, shape, num_classes):
        single = dataclasses.replace(config, model=dataclasses.replace(config.model, placement=[block])).without_weights()
        costs = exit_costs(build_model(single, shape, num_classes), shape)
        heads.append(costs.macs[-1] - costs.backbone_macs)
    return tuple(heads)


def subset_costs(dense_costs: Sequence[float], heads: Sequence[float], kept: Sequence[int]) -> np.ndarray:
    """Cumulative MACs of leaving at each exit of the model that keeps only the ICs ``kept``
    (0-based positions among the dense model's ICs, increasing) and its final head, from the dense
    model's cumulative exit costs (ICs included, the final exit last) and each IC's ``heads`` MACs."""
    dense = np.asarray(dense_costs, dtype=float)
    own = np.asarray(heads, dtype=float)
    if dense.ndim != 1 or own.shape != (len(dense) - 1,):
        raise ValueError(f"heads must hold one value per IC ({len(dense) - 1}), got {len(own)}")
    kept = list(kept)
    if any(not 0 <= k < len(own) for k in kept) or kept != sorted(set(kept)):
        raise ValueError(f"kept must be increasing IC positions in 0..{len(own) - 1}, got {kept}")
    backbone_to = dense - np.append(np.cumsum(own), own.sum())  # the backbone alone up to each exit (the final head included)
    mask = np.zeros(len(own), dtype=bool)
    mask[kept] = True
    kept_heads = np.append(np.cumsum(np.where(mask, own, 0.0)), (own * mask).sum())
    return (backbone_to + kept_heads)[[*kept, len(own)]]


def subset_outputs(out: ExitOutputs, heads: Sequence[float], kept: Sequence[int]) -> ExitOutputs:
    """``out`` (a dense run) read as the model that keeps only the ICs ``kept`` and its final exit."""
    exits = [*kept, len(heads)]
    return ExitOutputs(
        test_logits=out.test_logits[exits],
        test_labels=out.test_labels,
        costs=subset_costs(out.costs, heads, kept),
        backbone_cost=out.backbone_cost,
        val_logits=None if out.val_logits is None else out.val_logits[exits],
        val_labels=out.val_labels,
        tags=dict(out.tags),
    )


def _val_accuracy(out: ExitOutputs, heads: Sequence[float], kept: Sequence[int], budgets: np.ndarray, grid: str) -> np.ndarray:
    """The best validation accuracy at each budget of the subset ``kept`` of a dense run (NaN where no point fits)."""
    exits = [*kept, len(heads)]
    points = sweep(out.val_logits[exits], out.val_labels, subset_costs(out.costs, heads, kept), out.backbone_cost, grid=grid)
    cost, accuracy = points["cost_macs"].to_numpy(), points["accuracy"].to_numpy()
    best = np.full(len(budgets), np.nan)
    for b, budget in enumerate(budgets):
        fitting = accuracy[cost <= budget * out.backbone_cost]
        if fitting.size:
            best[b] = fitting.max()
    return best


def choose_placements(
    dense: Sequence[ExitOutputs], heads: Sequence[float], blocks: Sequence[int], budgets: Sequence[float],
    grid: str = "dense", max_exhaustive: int = MAX_EXHAUSTIVE_ICS,
) -> pd.DataFrame:
    """Per regime (the runs' ``regime`` tags; their other runs are seeds), the placement with the
    highest mean validation accuracy over seeds at each of ``budgets``, chosen among the subsets of
    the dense runs' ICs (at ``blocks``, 1-based, with ``heads`` MACs each): every subset when there
    are at most ``max_exhaustive`` ICs, else greedily (from no IC, add the IC that raises the mean
    accuracy most, while one does). A subset that some seed cannot run within a budget does not fit
    it; ties go to fewer ICs, then to the earlier blocks. Reads the validation split only.

    One row per (regime, budget): :data:`CHOICE_COLUMNS` (``placement`` the chosen block indices as
    a list, ``ics`` their number, ``val_accuracy`` the mean over seeds, ``search`` how it was found).
    A budget no subset fits has ``placement`` None."""
    budgets_ = np.asarray(checked_budgets(budgets))
    if len(blocks) != len(heads):
        raise ValueError(f"blocks ({len(blocks)}) and heads ({len(heads)}) must name the same ICs")
    if any(out.val_logits is None for out in dense):
        raise ValueError("every dense run needs validation logits: the placements are chosen on validation")
    n_ics = len(heads)
    rows = []
    for (regime,), runs in group_runs(dense, ("regime",)).items():
        def score(kept: tuple[int, ...]) -> np.ndarray:
            return np.mean([_val_accuracy(out, heads, kept, budgets_, grid) for out in runs], axis=0)  # NaN if a seed misses

        if n_ics <= max_exhaustive:
            search = f"exhaustive ({2 ** n_ics} subsets)"
            subsets = [kept for size in range(n_ics + 1) for kept in itertools.combinations(range(n_ics), size)]
            scores = {kept: score(kept) for kept in subsets}
            best = [_best(scores, b) for b in range(len(budgets_))]
        else:
            search = f"greedy forward ({n_ics} ICs)"
            best = [_greedy(score, n_ics, b) for b in range(len(budgets_))]
        for b, (kept, accuracy) in enumerate(best):
            rows.append({
                "regime": regime, "budget": float(budgets_[b]),
                "placement": None if kept is None else [int(blocks[k]) for k in kept],
                "ics": None if kept is None else len(kept), "val_accuracy": accuracy, "search": search,
            })
    return pd.DataFrame(rows, columns=list(CHOICE_COLUMNS))


def _best(scores: dict[tuple[int, ...], np.ndarray], b: int) -> tuple[tuple[int, ...] | None, float]:
    """The subset with the highest score at budget ``b``, the first on a tie (subsets are listed by size, then blocks)."""
    chosen, top = None, -np.inf
    for kept, values in scores.items():
        if not np.isnan(values[b]) and values[b] > top:
            chosen, top = kept, float(values[b])
    return chosen, (top if chosen is not None else float("nan"))


def _greedy(score: Any, n_ics: int, b: int) -> tuple[tuple[int, ...] | None, float]:
    """Greedy forward selection at budget ``b``: from no IC, add the one that raises the score most, while one does."""
    kept: tuple[int, ...] = ()
    current = float(score(kept)[b])
    chosen = (kept, current) if not np.isnan(current) else (None, float("nan"))
    while len(kept) < n_ics:
        trials = [tuple(sorted((*kept, k))) for k in range(n_ics) if k not in kept]
        step, value = _best({trial: score(trial) for trial in trials}, b)
        if step is None or (not np.isnan(current) and value <= current):
            break
        kept, current = step, value
        chosen = (kept, current)
    return chosen


def choice_label(budget: float, regime: str) -> str:
    """The variant label of the placement retrained for ``regime`` at ``budget``."""
    return f"tuned for {budget:.0%}, {regime}"


def check_dense(config: RunConfig) -> None:
    """Raise a :class:`ParameterError` unless ``config`` trains ICs that can be read as subsets."""
    if config.model.method != "sdn":
        raise ParameterError(
            f"rows: the dense model must train independent ICs (model.method=sdn) to be read as subsets, got {config.model.method!r}"
        )


def dense_readings(
    dense: Sequence[ExitOutputs], choices: pd.DataFrame, heads: Sequence[float], blocks: Sequence[int], grid: str = "dense"
) -> pd.DataFrame:
    """Test accuracy of every regime's chosen placements read from every dense run (operating points
    picked on validation): one row per (run's ``regime``, ``seed``, ``chosen_by`` regime, ``budget``)
    with ``accuracy`` and ``cost_pct``; and, as ``chosen_by`` :data:`DENSE`, the dense run itself."""
    position = {int(block): k for k, block in enumerate(blocks)}
    frames = []
    for row in choices.itertuples():
        if row.placement is None:
            continue
        kept = [position[int(block)] for block in row.placement]
        scoring = Scoring(budgets=(row.budget,), grid=grid, pick="best")
        points = run_points([subset_outputs(out, heads, kept) for out in dense], scoring)
        frames.append(points.assign(chosen_by=row.regime))
    budgets = tuple(sorted(set(choices["budget"])))
    frames.append(run_points(list(dense), Scoring(budgets=budgets, grid=grid, pick="best")).assign(chosen_by=DENSE))
    frame = pd.concat(frames, ignore_index=True)
    return frame[READING_COLUMNS]


# --- the page's study: the dense runs, the choices made on them, the retrained placements ---------


@dataclasses.dataclass(frozen=True)
class Design:
    """The dense runs of one row (``dense``: their outputs, tagged as the study tags them), each
    IC's ``blocks`` (1-based) and ``heads`` MACs, and the ``choices`` made on them (:func:`choose_placements`)."""

    dense: list[ExitOutputs]
    blocks: tuple[int, ...]
    heads: tuple[int, ...]
    choices: pd.DataFrame


def dense_row(s: Any) -> Any:
    """The one row of study ``s`` whose runs are the dense models; a :class:`ParameterError` unless it has one, training SDN ICs."""
    if len(s.rows) != 1:
        raise ParameterError(
            f"rows: the IC-design page reads one dense row, got {len(s.rows)}: {[row.label for row in s.rows]} "
            "(in a profile, give it its own: notebooks.ic_design.rows)"
        )
    check_dense(s.rows[0].config)
    return s.rows[0]


def ic_positions(s: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dense row's IC positions (the 1-based blocks they read) and each IC's head MACs, on the
    input its stored runs were trained on (every dense run must be stored)."""
    from mexit.store import RunStore

    row = dense_row(s)
    run = RunStore(s.runs_root).load(s.configs()[0][1])
    if run is None:
        raise ValueError("the dense runs must be stored before their ICs' costs are read")
    shape, classes = tuple(run.metrics["input_shape"]), run.metrics["num_classes"]
    return placement_blocks(row.config, shape, classes), head_macs(row.config, shape, classes)


def design_choices(s: Any, budgets: Sequence[float], max_exhaustive: int = MAX_EXHAUSTIVE_ICS) -> pd.DataFrame | None:
    """:func:`choose_placements` on the dense runs of ``s`` (None until every one is stored), kept
    in the store (:meth:`mexit.store.RunStore.cached_table`, keyed by the dense runs, the budgets, the
    grid and this code), so that planning again reads it instead of searching again."""
    import json

    from mexit.store import RunStore

    dense_row(s)
    budgets = checked_budgets(budgets)
    store = RunStore(s.runs_root)
    configs = [config for _, config in s.configs()]
    if any(store.load(config) is None for config in configs):
        return None

    def compute() -> pd.DataFrame:
        blocks, heads = ic_positions(s)
        table = choose_placements(s.outputs(), heads, blocks, budgets, s.scoring.grid, max_exhaustive)  # stored: loaded
        return table.assign(placement=table["placement"].map(json.dumps))

    inputs = {"runs": [config.key() for config in configs], "budgets": list(budgets), "grid": s.scoring.grid, "max_exhaustive": max_exhaustive}
    table = store.cached_table("placement_choices", inputs, compute, code=__name__)
    table["placement"] = table["placement"].map(lambda text: json.loads(text) if isinstance(text, str) else None)
    return table


def design_study(s: Any, choices: pd.DataFrame) -> Any:
    """The retrained placements of ``choices`` as a study: ``s``'s dense row with each chosen
    placement as a variant (:func:`choice_label`) trained under its regime only, on ``s``'s seeds
    (paired with the dense runs); a placement other than the dense one trains without
    gradient-dominance probes (no page reads them), the dense one is the dense run. Disjoint and
    mixed runs begin with the dense runs' P1, which the ICs do not touch. None when no placement with
    an IC was chosen."""
    row = dense_row(s)
    dense_key = row.config.key()
    rows = []
    for choice in choices.itertuples():
        if choice.placement is None or not len(choice.placement):
            continue
        model = dataclasses.replace(row.config.model, placement=[int(block) for block in choice.placement])
        config = dataclasses.replace(row.config, model=model)
        if config.key() != dense_key:  # a placement of its own (the dense one is the dense run, probed)
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, dominance_every=0))
        rows.append(dataclasses.replace(row, config=config, variant=choice_label(choice.budget, choice.regime), regimes=(choice.regime,)))
    return dataclasses.replace(s, rows=tuple(rows)) if rows else None


def planned_study(s: Any, budgets: Sequence[float]) -> Any:
    """The retrained placements' study that ``mexit book`` trains once the dense runs are stored
    (None before: the choices need them)."""
    choices = design_choices(s, budgets)
    return None if choices is None else design_study(s, choices)


def retrained_readings(retrained: Sequence[ExitOutputs], choices: pd.DataFrame, grid: str = "dense") -> pd.DataFrame:
    """Test accuracy of each retrained placement at the budget it was chosen for (operating points
    picked on validation): one row per run with ``regime``, ``seed``, ``budget``, ``accuracy``,
    ``cost_pct`` and ``chosen_by`` (its own regime)."""
    budget_of = {choice_label(row.budget, row.regime): row.budget for row in choices.itertuples()}
    frames = []
    for out in retrained:
        scoring = Scoring(budgets=(budget_of[out.tags["variant"]],), grid=grid, pick="best")
        frames.append(run_points([out], scoring).assign(chosen_by=out.tags["regime"]))
    frame = pd.concat(frames, ignore_index=True)
    return frame[READING_COLUMNS]


def design_table(dense: pd.DataFrame, retrained: pd.DataFrame, choices: pd.DataFrame) -> pd.DataFrame:
    """Per regime and budget: the chosen placement, its ICs, its validation accuracy on the dense
    model, and the test accuracy (mean over seeds) of the dense model with every IC, of the chosen
    placement read from the dense model, and of it retrained alone."""
    own = dense[dense["chosen_by"] == dense["regime"]]
    every = dense[dense["chosen_by"] == DENSE]

    def mean(frame: pd.DataFrame) -> pd.Series:
        return frame.groupby(["regime", "budget"])["accuracy"].mean()

    table = choices.set_index(["regime", "budget"])[["placement", "ics", "val_accuracy"]].copy()
    table["placement"] = table["placement"].map(lambda p: "none fits" if p is None else ", ".join(map(str, p)) or "no IC")
    table = table.rename(columns={"placement": "ICs after blocks", "ics": "ICs", "val_accuracy": "chosen on (validation)"})
    table["every block (test)"] = mean(every)
    table["chosen, read from dense (test)"] = mean(own)
    table["chosen, retrained (test)"] = mean(retrained) if not retrained.empty else np.nan
    table.index = table.index.set_levels([f"{100 * b:g}%" for b in table.index.levels[1]], level=1)
    return table.round(1)


def design_claims(dense: pd.DataFrame, retrained: pd.DataFrame, evidence: pd.DataFrame) -> pd.DataFrame:
    """:data:`mexit.claims.IC_DESIGN_CLAIMS` per regime, from :func:`dense_readings` and
    :func:`retrained_readings`, decided on ``evidence`` (the dense runs', tagged ``variant``
    :data:`DENSE`, with the retrained runs'): each effect averaged over the target budgets at which
    every run it compares has a point, paired by seed."""
    from mexit import claims

    rows, regimes_of = [], []
    for (label, regime), own in dense[dense["chosen_by"] == dense["regime"]].groupby(["row", "regime"], sort=False):
        mine = dense[(dense["row"] == label) & (dense["regime"] == regime)]
        every = mine[mine["chosen_by"] == DENSE]
        again = retrained[(retrained["row"] == label) & (retrained["regime"] == regime)]
        variants = (DENSE, *sorted({choice_label(b, regime) for b in again["budget"]}))
        compared = claims.Compared(str(label), (str(regime),), variants)
        for claim, minuend, subtrahend in (
            (claims.TUNED_PLACEMENT_BEATS_EVERY, again, every),
            (claims.DENSE_PREDICTS_RETRAINED, again, own),
        ):
            effect, budgets = _paired_budget_mean(minuend, subtrahend)
            rows.append(claims.assess(claim, effect, _scale(label, regime, budgets), compared))
            regimes_of.append(regime)
        others = mine[~mine["chosen_by"].isin((DENSE, regime))]
        if not others.empty:
            best_other = others.groupby(["seed", "budget"])["accuracy"].max().rename("accuracy").reset_index()
            effect, budgets = _paired_budget_mean(own, best_other)
            regimes = tuple(str(r) for r in pd.unique(dense["regime"]))
            rows.append(claims.assess(claims.PLACEMENT_DEPENDS_ON_REGIME, effect, _scale(label, regime, budgets), claims.Compared(str(label), regimes, (DENSE,))))
            regimes_of.append(regime)
    return claims.decide(rows, evidence).assign(regime=regimes_of)


def regime_sentences(status: pd.DataFrame, claim: Any) -> str:
    """``claim``'s verdicts of :func:`design_claims`, one per regime, as a page's text cites them:
    "joint: effect [low, high] points: verdict, on n seeds; ..." (:func:`mexit.claims.claim_sentence`)."""
    from mexit.claims import claim_sentence

    rows = status[status["key"] == claim.key]
    return "; ".join(f"{row['regime']}: {claim_sentence(row)}" for _, row in rows.iterrows())


def _paired_budget_mean(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.Series, list[float]]:
    """``a - b`` accuracy per seed, averaged over the budgets at which both have every seed's point."""
    wide = [frame.pivot_table(index="seed", columns="budget", values="accuracy", dropna=False) for frame in (a, b)]
    budgets = sorted(float(x) for x in set(wide[0].columns) & set(wide[1].columns) if wide[0][x].notna().all() and wide[1][x].notna().all())
    if not budgets or a.empty or b.empty:
        return pd.Series(dtype=float), []
    return (wide[0][budgets] - wide[1][budgets]).mean(axis=1), budgets


def _scale(label: str, regime: str, budgets: Sequence[float]) -> str:
    shown = ", ".join(f"{100 * b:g}%" for b in budgets)
    return f"{label}, {regime} (budgets {shown})" if budgets else f"{label}, {regime}"


@dataclasses.dataclass(frozen=True)
class DesignPage:
    """What the IC-design page shows: the ``design`` (dense runs, IC positions, choices), each
    run's readings (``dense``: :func:`dense_readings`; ``retrained``: :func:`retrained_readings`),
    which runs are evidence (``evidence``, ``phases``: dense runs as variant :data:`DENSE`), the
    summary ``table`` (:func:`design_table`) and the claims' ``status`` (:func:`design_claims`)."""

    design: Design
    dense: pd.DataFrame
    retrained: pd.DataFrame
    evidence: pd.DataFrame
    phases: pd.DataFrame
    table: pd.DataFrame
    status: pd.DataFrame


def design_page(s: Any, budgets: Sequence[float]) -> DesignPage:
    """The IC-design page of study ``s`` (one dense row) at the target ``budgets``: its dense runs
    loaded (trained where missing, outside ``mexit book``), the placements chosen on them, the
    chosen placements retrained and every reading, evidence and claim."""
    dense_outputs = s.outputs()  # the dense runs, stored before anything is chosen on them
    choices = design_choices(s, budgets)
    assert choices is not None  # every dense run is stored now
    chosen = Design(dense_outputs, *ic_positions(s), choices)
    grid = s.scoring.grid
    dense = dense_readings(chosen.dense, chosen.choices, chosen.heads, chosen.blocks, grid)
    dense_evidence, dense_phases = s.evidence()
    evidence, phases = [dense_evidence.assign(variant=DENSE)], [dense_phases.assign(variant=DENSE)]
    retrained = pd.DataFrame(columns=dense.columns)
    again = design_study(s, chosen.choices)
    if again is not None:
        retrained = retrained_readings(again.outputs(), chosen.choices, grid)
        more, more_phases = again.evidence()
        evidence.append(more)
        phases.append(more_phases)
    evidence_ = pd.concat(evidence, ignore_index=True)
    return DesignPage(
        chosen, dense, retrained, evidence_, pd.concat(phases, ignore_index=True),
        design_table(dense, retrained, chosen.choices), design_claims(dense, retrained, evidence_),
    )
