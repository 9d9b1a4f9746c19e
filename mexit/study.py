"""What a book notebook compares: rows (backbone x dataset) x regimes x seeds, checked and trained once.

A notebook's parameters (from a profile, or from papermill's ``-p``/``-y``) are checked by
:func:`make_study`, which stops with one :class:`ParameterError` naming the first bad parameter before
anything is trained. The checked :class:`Study` then lists its run configs, trains or loads them
through the shared run store (every notebook asking for the same run gets the same stored one) and
hands back their outputs tagged with ``row``, ``regime`` and ``seed``::

    s = make_study(rows=[{"label": "ResNet-20", "config": "mnist5k-quick"}], seeds=[0, 1, 2],
                   regimes=["disjoint", "joint", "mixed"], runs_root="runs")
    outputs = s.outputs()      # list of mexit.evaluate.ExitOutputs, one per (row, regime, seed)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mexit.config import REGIMES, OptimConfig, ParameterError, RunConfig, load_config, regime_configs, stable_hash
from mexit.evaluate import ExitOutputs, run_curve, single_exits, training_macs_per_sample
from mexit.evaluate.evidence import DEFAULT_WINDOW, gate_errors, phase_curve, run_evidence
from mexit.evaluate.scoring import Scoring
from mexit.regimes import PHASE_SPECS
from mexit.reference import paper_accuracy, paper_rows
from mexit.pipeline import train_or_load, trained_model
from mexit.models import build_model
from mexit.store import Run, RunStore, default_root

ROW_FIELDS: tuple[str, ...] = ("label", "config", "overrides", "paper")
VARIANT_FIELDS: tuple[str, ...] = ("label", "overrides", "regimes", "rows", "exit_method")
PAIRS: tuple[tuple[str, str], ...] = (("mixed", "joint"), ("mixed", "disjoint"))


@dataclass(frozen=True)
class Row:
    """One row of Table 1: a label, the run config it trains (overrides applied) and, optionally,
    the paper's row it reproduces (``"ResNet-34 / CIFAR-100"``, as ``model / dataset`` in
    :mod:`mexit.reference`)."""

    label: str
    config: RunConfig
    paper: str | None = None
    variant: str | None = None
    """The ablation variant this row trains (:func:`make_study`'s ``variants``), None outside ablations."""
    regimes: tuple[str, ...] | None = None
    """The regimes this variant trains (None: the study's)."""
    exit_method: str | None = None
    """The method whose exit rule scores the runs (``"pbee"``: patience), None: the trained method's."""

    @property
    def tags(self) -> dict[str, str]:
        """``row`` and, in an ablation, ``variant``: how the row's runs are tagged."""
        return {"row": self.label, **({"variant": self.variant} if self.variant is not None else {})}


@dataclass(frozen=True)
class Study:
    """Checked notebook parameters: rows x regimes x seeds, and the run store they live in."""

    rows: tuple[Row, ...]
    regimes: tuple[str, ...]
    seeds: tuple[int, ...]
    runs_root: Path
    scoring: Scoring = Scoring(grid="dense")  # how its runs are read at the budgets
    longer_schedule: int | None = None
    """How many times longer the schedule is that checks a phase its schedule ended
    (:func:`stretched`, :meth:`schedule_checks`); None: not checked, so such a phase is not evidence."""

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The regime comparisons of the paper that this study's regimes allow: mixed - joint, mixed - disjoint."""
        return [(a, b) for a, b in PAIRS if a in self.regimes and b in self.regimes]

    def with_seeds(self, seeds: Any, name: str = "fresh_seeds") -> Study | None:
        """The same study on another set of seeds, disjoint from this one's (None for an empty list),
        :meth:`without_probes`: how a page sets its verdicts beside those of fresh seeds, which no
        page reads gradient dominance from. A bad list raises :class:`ParameterError` naming ``name``."""
        if isinstance(seeds, list) and not seeds:
            return None
        checked = _seed_list(name, seeds)
        shared = sorted(set(checked) & set(self.seeds))
        if shared:
            raise ParameterError(f"{name} must be disjoint from seeds {list(self.seeds)}; both hold {shared}")
        return dataclasses.replace(self, seeds=tuple(checked)).without_probes()

    def without_probes(self) -> Study:
        """The same runs without gradient-dominance probes (``train.dominance_every=0``), for runs
        whose probes no page reads: a probe is a measurement that leaves training unchanged (the
        same weights, tested), and it costs about a sixth of a quick joint run."""
        rows = tuple(
            dataclasses.replace(row, config=dataclasses.replace(row.config, train=dataclasses.replace(row.config.train, dominance_every=0)))
            for row in self.rows
        )
        return dataclasses.replace(self, rows=rows)

    def configs(self) -> list[tuple[Row, RunConfig]]:
        """Every run the study needs, row by row and seed by seed (so a shared P1 is trained first)."""
        return [
            (row, config)
            for row in self.rows
            for config in regime_configs(row.config, [r for r in self.regimes if r in (row.regimes or self.regimes)], self.seeds)
        ]

    def schedule_checks(self) -> list[tuple[Row, RunConfig]]:
        """The runs that check the phases a schedule ends (:attr:`longer_schedule`): every run of
        :meth:`configs` with a phase whose schedule anneals to about zero, stretched (none when
        :attr:`longer_schedule` is None). A run that holds out no validation split (the authors'
        protocol without early stopping) has no curve to compare, so it gets none: its phases read
        "no validation curve" (:func:`mexit.evaluate.evidence.phase_ending`)."""
        if self.longer_schedule is None:
            return []
        return [(row, stretched(config, self.longer_schedule)) for row, config in self.configs()
                if any(_annealed(config)) and config.train.holds_out_validation]

    def runs(self) -> list[tuple[Row, Run]]:
        """Each needed run, loaded from the store or trained into it: ``(row, mexit.store.Run)``."""
        store = RunStore(self.runs_root)
        pairs = []
        for row, config in self.configs():
            pairs.append((row, train_or_load(store, config, progress_label=run_label(row, config))))
        return pairs

    def phase_costs(self) -> pd.DataFrame:
        """One row per (run, phase): ``row``, ``regime``, ``seed``, ``run`` (its key), the phase record
        (:meth:`mexit.store.Run.phases`: wall time, epochs, steps, the shared ``phase_key``) and
        ``train_macs`` (:func:`mexit.evaluate.cost.training_macs_per_sample` times steps times the
        phase's batch size: the last, shorter batch of an epoch counted whole)."""
        return self._per_run(phase_costs_of)

    def outputs(self) -> list[ExitOutputs]:
        """The test/validation logits and costs of every run, tagged ``row``, ``regime``, ``seed``
        (and ``variant`` in an ablation; ``method`` is the row's ``exit_method`` where it has one)."""
        return [
            run.outputs(**row.tags, **({"method": row.exit_method} if row.exit_method else {})) for row, run in self.runs()
        ]

    def evidence(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Whether each run is evidence (:mod:`mexit.evaluate.evidence`): one row per run (its tags,
        ``converged``, ``learned``, ``early_stopped``, ``evidence``, ``why``) and one per (run, phase)
        (``phase``, ``epochs_run``, ``epoch_cap``, ``ending``, ``ended``, ``converged``), both tagged ``row``, ``regime``, ``seed``,
        ``run`` (and ``variant`` in an ablation). What every claim of a notebook is checked against."""
        runs, phases = [], []
        store = RunStore(self.runs_root)
        for row, run in self.runs():
            tags = {**row.tags, "regime": run.config.train.regime, "seed": run.config.train.seed, "run": run.key}
            longer = None
            if self.longer_schedule is not None and any(_annealed(run.config)):
                twin = stretched(run.config, self.longer_schedule)
                longer = train_or_load(store, twin, progress_label=f"{run_label(row, run.config)} (longer schedule)")
            summary, per_phase = run_evidence_of(run, longer)
            runs.append({**tags, **summary})
            phases.append(per_phase.assign(**tags))
        return pd.DataFrame(runs), pd.concat(phases, ignore_index=True)

    def traces(self) -> pd.DataFrame:
        """Every run's training trace (:meth:`mexit.store.Run.trace`) with ``row``, ``regime``, ``seed``."""
        return self._per_run(lambda run: run.trace())

    def _per_run(self, frame_of: Callable[[Run], pd.DataFrame]) -> pd.DataFrame:
        frames = [
            frame_of(run).assign(**row.tags, regime=run.config.train.regime, seed=run.config.train.seed, run=run.key)
            for row, run in self.runs()
        ]
        return pd.concat(frames, ignore_index=True)


def phase_costs_of(run: Run) -> pd.DataFrame:
    """:meth:`mexit.store.Run.phases` with each phase's training MACs (``train_macs``)."""
    phases, costs, train = run.phases(), run.costs, run.config.train
    per_sample = [training_macs_per_sample(name, costs["macs"], costs["backbone_macs"]) for name in phases["phase"]]
    batch = [train.optim_for(index).batch_size for index in range(len(phases))]
    return phases.assign(train_macs=[m * b * int(steps) for m, b, steps in zip(per_sample, batch, phases["steps"])])


def run_evidence_of(run: Run, longer: Run | None = None) -> tuple[dict[str, object], pd.DataFrame]:
    """:func:`mexit.evaluate.evidence.run_evidence` of one stored run: each phase's curve over the
    exits its loss trains, its patience (or the default) as the plateau window; ``longer`` the same
    run with a stretched schedule (:func:`stretched`), which checks the phases its schedule ended."""
    train = run.config.train
    num_exits = len(run.metrics["test_acc"])
    exits = [PHASE_SPECS[name].exits_in_loss(num_exits) for name in train.phase_list]
    window = train.patience or DEFAULT_WINDOW
    accuracies = [float(a) for a in run.metrics["test_acc"]]
    val_size = len(run.labels("val")) if run.has_validation else 1
    longer_trace = longer.trace() if longer is not None else None
    return run_evidence(run.trace(), run.phases(), exits, window, accuracies, run.labels("test").numpy(), val_size,
                        _annealed(run.config), longer_trace)


def _annealed(config: RunConfig) -> list[bool]:
    """Whether each phase of ``config`` anneals its learning rate to about zero (:func:`anneals_to_zero`)."""
    train = config.train
    return [anneals_to_zero(train.optim_for(i)) for i in range(len(train.phase_list))]


def stretched(config: RunConfig, factor: int) -> RunConfig:
    """``config`` with every phase's epoch cap ``factor`` times longer, its schedule stretched to
    the new cap (a schedule runs over its phase's steps): the run that checks whether a phase its
    schedule ended had converged (:func:`mexit.evaluate.evidence.phase_ending`). Raises
    :class:`ParameterError` naming ``longer_schedule`` for a factor that is not an integer >= 2."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ParameterError(f"longer_schedule must be null or an integer factor >= 2, got {factor!r}")
    epochs = config.train.epochs
    if isinstance(epochs, int):
        longer: Any = epochs * factor
    elif isinstance(epochs, Mapping):
        longer = {phase: count * factor for phase, count in epochs.items()}
    else:
        longer = [count * factor for count in epochs]
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=longer))


def anneals_to_zero(optim: OptimConfig) -> bool:
    """Whether a phase's schedule brings its learning rate to about zero at its cap (cosine to a
    ``min_lr`` of at most 1% of ``lr``): a phase ended there ended by its schedule."""
    return optim.schedule == "cosine" and optim.min_lr <= 0.01 * optim.lr


GATE_WINDOWS: tuple[int, ...] = (1, 2)
"""Plateau windows, in multiples of a phase's patience, at which :func:`gate_error_table` measures the plateau test."""
GATE_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
"""Tolerances, in multiples of the validation split's standard error, at which :func:`gate_error_table` measures it."""


def gate_error_table(s: Study, windows: Sequence[int] = GATE_WINDOWS, scales: Sequence[float] = GATE_SCALES) -> pd.DataFrame:
    """How often a plateau test (:func:`mexit.evaluate.evidence.plateau`) would err on ``s``'s runs
    if it judged a phase cut by a cap: :func:`mexit.evaluate.evidence.gate_errors` over every
    distinct phase that early stopping ended under a learning rate that stays up (each such phase,
    cut at an earlier evaluation, is the phase a smaller cap would have given), per row, at each
    window (x the phase's patience) and tolerance (x the validation split's standard error). One row
    per (row, window, scale): ``row``, ``window``, ``scale``, ``phases``, ``converged_cuts``,
    ``truncated_cuts``, ``false_alarm`` and ``missed`` (%)."""
    curves: dict[str, dict[str, tuple[list[float], int, int]]] = {label: {} for label in dict.fromkeys(r.label for r in s.rows)}
    for row, run in s.runs():
        train = run.config.train
        if train.patience is None or not run.has_validation:
            continue
        num_exits, val_size = len(run.metrics["test_acc"]), len(run.labels("val"))
        for index, (name, record) in enumerate(zip(train.phase_list, run.phases().itertuples(), strict=True)):
            if bool(record.stopped_early) and not anneals_to_zero(train.optim_for(index)):
                curve = phase_curve(run.trace(), name, PHASE_SPECS[name].exits_in_loss(num_exits))
                curves[row.label][str(record.phase_key)] = (curve.tolist(), train.patience, val_size)
    records = []
    for label, phases in curves.items():
        for times, scale in itertools.product(windows, scales):
            parts = [gate_errors([curve], times * patience, val_size, scale) for curve, patience, val_size in phases.values()]
            records.append({"row": label, "window": times, "scale": scale, **_pooled(parts)})
    return pd.DataFrame(records, columns=["row", "window", "scale", "phases", "converged_cuts", "truncated_cuts", "false_alarm", "missed"])


def _pooled(parts: list[dict[str, float]]) -> dict[str, float]:
    """:func:`mexit.evaluate.evidence.gate_errors` of single phases, pooled over their cuts."""
    converged = sum(int(p["converged_cuts"]) for p in parts)
    truncated = sum(int(p["truncated_cuts"]) for p in parts)

    def rate(key: str, cuts: str, total: int) -> float:
        return sum(p[key] * p[cuts] for p in parts if p[cuts]) / total if total else float("nan")

    return {"phases": len(parts), "converged_cuts": converged, "truncated_cuts": truncated,
            "false_alarm": rate("false_alarm", "converged_cuts", converged), "missed": rate("missed", "truncated_cuts", truncated)}


def run_label(row: Row, config: RunConfig) -> str:
    """How a run's training progress is labelled: row, variant, regime and seed."""
    variant = f" [{row.variant}]" if row.variant is not None else ""
    return f"{row.label}{variant} {config.train.regime} s{config.train.seed} "


def table1_view(table: pd.DataFrame, s: Study, *, ci: bool = False) -> pd.DataFrame:
    """Table 1 as the book shows it: :func:`mexit.plots.format_budget_table` of a
    :func:`mexit.evaluate.budget_table` grouped by ``row`` and ``regime`` (mean ± std, or with
    ``ci`` mean [95% CI]), with the paper's 100% column where a row reproduces one of the paper's
    ("–" beside the others; no column when none does)."""
    from mexit.plots import format_budget_table

    view = format_budget_table(table, ci=ci)
    papers = {row.label: row.paper for row in s.rows}
    if not any(papers.values()):
        return view
    values = [paper_accuracy(papers[label], regime) for label, regime in view.index]
    view["paper 100%"] = ["–" if v is None else f"{v:.2f}" for v in values]
    return view


def final_exits(exits: pd.DataFrame) -> pd.DataFrame:
    """The final exit's test accuracy (%) per row and regime, mean over seeds, from
    :func:`exit_table`'s rows: disjoint's is the backbone trained alone (P1's), joint's and mixed's
    the backbone trained with its ICs."""
    last = exits[exits["exit"] == exits.groupby("row")["exit"].transform("max")]
    return last.groupby(["row", "regime"], sort=False)["accuracy"].mean().unstack("regime")


def exit_table(outputs: list[ExitOutputs]) -> pd.DataFrame:
    """Each exit of each run on its own (:func:`mexit.evaluate.single_exits`), with the run's tags."""
    frames = [
        single_exits(o.test_logits, o.test_labels, o.costs, o.backbone_cost).assign(**o.tags) for o in outputs
    ]
    return pd.concat(frames, ignore_index=True)


def head_costs(outputs: list[ExitOutputs], by: Sequence[str] = ("row", "variant")) -> pd.DataFrame:
    """What the ICs add, per group of runs (the first run of each; runs of one config cost the same):
    ``ics`` (how many), ``ic_macs`` (all ICs together: the final exit's MACs minus the
    backbone-only model's), ``ic_pct`` (that, in % of the backbone) and ``macs_per_ic``."""
    records = {}
    for o in outputs:
        key = tuple(o.tags[k] for k in by)
        if key not in records:
            extra = float(o.costs[-1] - o.backbone_cost)
            ics = len(o.costs) - 1
            records[key] = {**dict(zip(by, key)), "ics": ics, "ic_macs": extra, "ic_pct": 100 * extra / o.backbone_cost,
                            "macs_per_ic": extra / ics if ics else 0.0}
    return pd.DataFrame(list(records.values()))


def p1_sharing(phases: pd.DataFrame) -> pd.DataFrame:
    """How the runs that begin with P1 share it, from :meth:`Study.phase_costs` (with its ``run``
    keys): per ``row`` and
    ``seed``, ``runs`` (how many begin with P1) and ``p1_states`` (how many distinct stored P1
    states they start from)."""
    first = phases.groupby("run", sort=False).head(1)  # a run compared under two variants counts once
    p1 = first[first["phase"] == "P1"]
    return p1.groupby(["row", "seed"], sort=False).agg(runs=("run", "size"), p1_states=("phase_key", "nunique")).reset_index()


def backbone_only(exits: pd.DataFrame) -> tuple[float, float] | None:
    """(cost %, accuracy %) of the backbone-only model of one row, from :func:`exit_table`: P1's
    final head, which disjoint keeps unchanged (its final exit, mean over seeds), at 100% of the
    backbone's cost; None without disjoint runs."""
    disjoint = exits[exits["regime"] == "disjoint"]
    if disjoint.empty:
        return None
    final = disjoint[disjoint["exit"] == disjoint["exit"].max()]
    return (100.0, float(final["accuracy"].mean()))


def sweep_table(outputs: list[ExitOutputs], scoring: Scoring) -> pd.DataFrame:
    """Every run's operating points (:func:`mexit.evaluate.run_curve`: the threshold sweep on
    ``scoring.grid``, or its method's own evaluation), with the run's tags."""
    return pd.concat([run_curve(o, scoring).assign(**o.tags) for o in outputs], ignore_index=True)


def counting_table(s: Study) -> pd.DataFrame:
    """Per row, each exit's cost under our counting and the authors'
    (:func:`mexit.flops.counting_difference`, on the model of the row's first run), tagged ``row``."""
    from mexit.flops import counting_difference

    first: dict[str, Run] = {}
    for row, run in s.runs():
        first.setdefault(row.label, run)
    frames = [
        counting_difference(trained_model(run), tuple(run.metrics["input_shape"])).assign(row=label) for label, run in first.items()
    ]
    return pd.concat(frames, ignore_index=True)


def block_counts(s: Study) -> pd.DataFrame:
    """Per row, its backbone as split (from the model of the row's first run): ``backbone``,
    ``blocks``, ``ICs``, ``backbone MMACs`` (the backbone alone, one input) and ``features`` (what
    its blocks output: maps in NCHW or NHWC layout, or tokens)."""
    from mexit.flops import exit_costs
    from mexit.models.backbones import backbone_features
    from mexit.models.heads import ChannelsFirst

    first: dict[str, Run] = {}
    for row, run in s.runs():
        first.setdefault(row.label, run)
    records = []
    for label, run in first.items():
        model = trained_model(run)
        features = backbone_features(run.config.model.backbone, run.config.model.backbone_kwargs)
        if features == "map" and any(isinstance(m, ChannelsFirst) for m in model.ics.modules()):  # its ICs read NHWC maps
            features = "map (NHWC)"
        records.append({
            "row": label, "backbone": run.config.model.backbone, "blocks": len(model.blocks), "ICs": len(model.ics),
            "backbone MMACs": round(exit_costs(model).backbone_macs / 1e6, 2), "features": features,
        })
    return pd.DataFrame(records).set_index("row")


def chosen_seeds(s: Study, seeds: list[int] | None, name: str = "seeds") -> list[int]:
    """``seeds`` (None: all of the study's), checked to be some of the study's; a :class:`ParameterError` naming ``name``."""
    if seeds is None:
        return list(s.seeds)
    if not isinstance(seeds, list) or not seeds or any(seed not in s.seeds for seed in seeds):
        raise ParameterError(f"{name} {seeds!r} must be a non-empty list of some of the study's seeds {list(s.seeds)}")
    return list(seeds)


def equilibrium_configs(s: Study, seeds: list[int] | None = None) -> list[tuple[Row, RunConfig]]:
    """The joint runs with gradient equilibrium (``train.gradient_equilibrium=true``) that the
    gradient-dominance page sets beside ``s``'s: one per row and seed of ``seeds`` (None: all of
    the study's; else checked, naming ``equilibrium_seeds``)."""
    chosen = chosen_seeds(s, seeds, "equilibrium_seeds")
    pairs = []
    for row in s.rows:
        base = dataclasses.replace(row.config, train=dataclasses.replace(row.config.train, gradient_equilibrium=True))
        pairs += [(row, config) for config in regime_configs(base, ["joint"], chosen)]
    return pairs


EQUAL_BUDGET_REGIMES: dict[str, tuple[str, ...]] = {"P1 then more": ("disjoint", "mixed"), "one phase": ("joint",)}


def equal_budget_study(s: Study, epochs: Any, p1_share: Any = 0.6) -> Study | None:
    """The runs of ``s`` again at an equal training budget (None for ``epochs`` None): each regime
    trains ``epochs`` epochs in all, under a cosine schedule over each phase (after the row's
    warm-up, kept) and without early stopping (the validation split still held out, so every run
    sees the same training images):
    joint's one phase all of them, disjoint's and mixed's P1 ``round(p1_share * epochs)`` and their
    second phase the rest (P1 shared by both). A reading of the regimes at a matched cost, which
    needs no convergence (:data:`mexit.claims.TABLE1_EQUAL_BUDGET_CLAIMS`); the rows keep their labels.
    Raises :class:`ParameterError` naming ``equal_budget`` or ``p1_share``."""
    if epochs is None:
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 2:
        raise ParameterError(f"equal_budget must be null or an integer number of epochs >= 2, got {epochs!r}")
    if isinstance(p1_share, bool) or not isinstance(p1_share, (int, float)) or not 0 < p1_share < 1:
        raise ParameterError(f"p1_share must be a number in (0, 1), got {p1_share!r}")
    first = min(max(1, round(p1_share * epochs)), epochs - 1)
    rows = []
    for row in s.rows:
        train = dataclasses.replace(
            row.config.train, patience=None, stopping="restore-best", dominance_every=0,
            optim=dataclasses.replace(row.config.train.optim, schedule="cosine", min_lr=0.0),
            phase_optim={phase: {k: v for k, v in o.items() if k not in ("schedule", "min_lr")} for phase, o in row.config.train.phase_optim.items()},
        )
        for regimes in EQUAL_BUDGET_REGIMES.values():
            split = {"P1": first, "P2": epochs - first, "P3": epochs - first} if "mixed" in regimes else dict.fromkeys(("P1", "P2", "P3"), epochs)
            config = dataclasses.replace(row.config, train=dataclasses.replace(train, epochs=split))
            rows.append(dataclasses.replace(row, config=config, regimes=tuple(r for r in regimes if r in s.regimes)))
    return dataclasses.replace(s, rows=tuple(r for r in rows if r.regimes))


def make_study(
    *,
    rows: Any,
    seeds: Any,
    regimes: Any,
    runs_root: Any,
    budgets: Any = (0.25, 0.5, 0.75, 1.0),
    grid: Any = "dense",
    variants: Any = None,
    pick: Any = "last",
    aggregate: Any = "runs",
    ztw_final: Any = "ensembled",
    longer_schedule: Any = None,
    require_data: bool = True,
) -> Study:
    """Check a notebook's parameters; raises :class:`ParameterError` naming the first bad one.

    ``rows``: a non-empty list of ``{label, config, overrides, paper}`` mappings (``config`` a
    shipped config name or YAML path, ``overrides`` a list of ``section.field=value``, ``paper``
    optional); ``seeds``: a non-empty list of distinct non-negative integers; ``regimes``: a
    non-empty list from :data:`mexit.config.REGIMES`; ``runs_root``: the run store folder (None: ``$MEXIT_RUNS`` or ``./runs``);
    ``budgets``: fractions of the backbone cost in (0, 1]; ``grid``: the threshold grid of the
    sweeps (:data:`mexit.evaluate.sweeps.GRIDS`); ``pick``, ``aggregate`` and ``ztw_final``: how
    budget tables read the runs (one :class:`~mexit.evaluate.Scoring`, :attr:`Study.scoring`, whose
    split follows ``pick``: the paper's ``"last"`` point on test, our ``"best"`` on validation).
    Every row's config is fully validated
    (backbone, placement, head, method, dataset and its ``data_root``, which must be a folder here
    unless ``require_data`` is False: a plan made away from the data) without training anything.

    ``variants`` (an ablation; None otherwise): a non-empty list of ``{label, overrides, regimes,
    rows, exit_method}`` mappings, each a change applied to every row (its ``overrides`` after the
    row's). The study's rows are then each row x each variant (``Row.variant``); a row's first
    variant is the reference its others are compared with. ``regimes`` and ``rows`` (optional)
    restrict which of the study's regimes a variant trains and which rows (by label) it applies to
    (a conv head fits a CNN row, an MLP head a ViT row); ``exit_method`` (optional, from :data:`mexit.models.METHODS`) scores
    its runs by that method's exit rule: ``"pbee"`` applies the patience rule to whatever the variant
    trained (PBEE as the authors run it, on an SDN-trained model).

    ``longer_schedule`` (None, or an integer factor >= 2): each run with a phase whose schedule
    anneals to about zero is retrained with every phase ``longer_schedule`` times longer, and such a
    phase is evidence when that gains at most the noise tolerance (:meth:`Study.schedule_checks`).
    """
    checked_seeds = _seed_list("seeds", seeds)
    checked_regimes = _str_list("regimes", regimes)
    for regime in checked_regimes:
        if regime not in REGIMES:
            raise ParameterError(f"regimes: unknown regime {regime!r}; allowed: {', '.join(REGIMES)}")
    scoring = Scoring(budgets=budgets, grid=grid, pick=pick, aggregate=aggregate, ztw_final=ztw_final)
    if runs_root is None:
        runs_root = default_root()
    if not isinstance(runs_root, (str, Path)) or not str(runs_root):
        raise ParameterError(f"runs_root must be a folder path (a string) or None ($MEXIT_RUNS or ./runs), got {runs_root!r}")
    if not isinstance(rows, list) or not rows:
        raise ParameterError(f"rows must be a non-empty list of {{label, config, overrides}} mappings, got {rows!r}")
    checked_rows = tuple(_row(index, value, require_data=require_data) for index, value in enumerate(rows))
    labels = [row.label for row in checked_rows]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"rows must have distinct labels, got {labels}")
    if variants is not None:
        checked_rows = _crossed(rows, _variants(variants, checked_regimes, labels), require_data)
    if longer_schedule is not None:
        stretched(checked_rows[0].config, longer_schedule)  # checks the factor
    return Study(checked_rows, tuple(checked_regimes), tuple(checked_seeds), Path(runs_root), scoring, longer_schedule)


_YAML_HINT = " (with papermill, pass lists as YAML: -y 'seeds: [0, 1, 2]')"


def _seed_list(name: str, value: Any) -> list[int]:
    seeds = _int_list(name, value)
    if len(set(seeds)) != len(seeds):
        raise ParameterError(f"{name} must be distinct, got {seeds}")
    if any(seed < 0 for seed in seeds):
        raise ParameterError(f"{name} must be non-negative integers, got {seeds}")
    return seeds


def _int_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ParameterError(f"{name} must be a non-empty list of integers, got {value!r}{_YAML_HINT}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ParameterError(f"{name} must hold integers only, got {item!r} in {value}")
    return list(value)


def _str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ParameterError(f"{name} must be a non-empty list, got {value!r}{_YAML_HINT}")
    for item in value:
        if not isinstance(item, str):
            raise ParameterError(f"{name} must hold names (strings), got {item!r} in {value}")
    return list(value)


def _variants(value: Any, regimes: Sequence[str], row_labels: Sequence[str]) -> list[dict[str, Any]]:
    from mexit.models import METHODS

    if not isinstance(value, list) or not value:
        raise ParameterError(f"variants must be a non-empty list of {{label, overrides}} mappings, got {value!r}{_YAML_HINT}")
    checked = []
    for index, variant in enumerate(value):
        where = f"variants[{index}]"
        if not isinstance(variant, Mapping) or set(variant) - set(VARIANT_FIELDS):
            raise ParameterError(f"{where} must be a mapping with keys among {', '.join(VARIANT_FIELDS)}, got {variant!r}")
        label, overrides = _label(where, variant), _overrides(where, variant)
        own = variant.get("regimes")
        if own is not None and (not isinstance(own, list) or not own or any(r not in regimes for r in own)):
            raise ParameterError(f"{where}.regimes must be a non-empty list among the study's regimes {list(regimes)}, got {own!r}")
        own_rows = variant.get("rows")
        if own_rows is not None and (not isinstance(own_rows, list) or not own_rows or any(r not in row_labels for r in own_rows)):
            raise ParameterError(f"{where}.rows must be a non-empty list of the study's row labels {list(row_labels)}, got {own_rows!r}")
        exit_method = variant.get("exit_method")
        if exit_method is not None and exit_method not in METHODS:
            raise ParameterError(f"{where}.exit_method: unknown method {exit_method!r}; allowed: {', '.join(METHODS)}")
        checked.append({"label": label, "overrides": overrides, "regimes": own, "rows": own_rows, "exit_method": exit_method})
    labels = [v["label"] for v in checked]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"variants must have distinct labels, got {labels}")
    return checked


def _crossed(rows: list[Mapping[str, Any]], variants: list[dict[str, Any]], require_data: bool) -> tuple[Row, ...]:
    """Each row with each variant's overrides after its own, checked as a row."""
    crossed = []
    for index, value in enumerate(rows):
        for number, variant in enumerate(variants):
            if variant["rows"] is not None and value["label"] not in variant["rows"]:
                continue
            overrides = [*value.get("overrides", []), *variant["overrides"]]
            where = f"variants[{number}] ({variant['label']!r}) on rows[{index}]"
            row = _row(index, {**value, "overrides": overrides}, where, require_data=require_data)
            regimes = tuple(variant["regimes"]) if variant["regimes"] else None
            crossed.append(dataclasses.replace(row, variant=variant["label"], regimes=regimes, exit_method=variant["exit_method"]))
    return tuple(crossed)


def _label(where: str, value: Mapping[str, Any]) -> str:
    label = value.get("label")
    if not isinstance(label, str) or not label:
        raise ParameterError(f"{where}.label must be a non-empty string, got {label!r}")
    return label


def _overrides(where: str, value: Mapping[str, Any]) -> list[str]:
    overrides = value.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ParameterError(f"{where}.overrides must be a list of 'section.field=value' strings, got {overrides!r}")
    return overrides


_BUILT: set[str] = set()  # the models (architecture, input shape, classes) built by :func:`_check_builds`


def _check_builds(config: RunConfig, *, require_data: bool = True) -> None:
    """Build the model on the CPU with random weights: checks what needs the backbone's depth, such
    as IC placement indices beyond it, and its split with real values (the meta device holds none
    and checks a split by its shapes alone: a functional op between children that changes values,
    not shapes, is refused here, before anything trains, not when its run is built). A model that
    starts from weights (published, with ``require_data`` on this machine: a plan for another
    machine, ``require_data`` False, builds without them; or a local checkpoint, which must fit) is
    also built on the meta device (no memory) with them, which checks them. A model is built once a process: pages share rows
    and rows share architectures (seeds, regimes and recipes do not change the model), so a plan of
    the paper profile builds each architecture once, not once a row and page."""
    import torch

    from mexit import data

    if not require_data and config.model.pretrained:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, pretrained=False))
    input_shape, classes = data.input_shape(config.data), data.STANDARD_CLASSES[config.data.name]
    key = stable_hash({"model": dataclasses.asdict(config.model), "input_shape": input_shape, "classes": classes})
    if key in _BUILT:
        return
    if config.model.pretrained or config.model.checkpoint is not None:
        with torch.device("meta"):
            build_model(config, input_shape, classes)
    with torch.no_grad():
        build_model(config.without_weights(), input_shape, classes)
    _BUILT.add(key)


def _row(index: int, value: Any, where: str | None = None, *, require_data: bool = True) -> Row:
    where = where or f"rows[{index}]"
    if not isinstance(value, Mapping):
        raise ParameterError(f"{where} must be a mapping with keys {', '.join(ROW_FIELDS)}, got {value!r}")
    unknown = set(value) - set(ROW_FIELDS)
    if unknown:
        raise ParameterError(f"{where} has unknown keys {sorted(unknown)}; allowed: {', '.join(ROW_FIELDS)}")
    label, name = _label(where, value), value.get("config")
    if not isinstance(name, str) or not name:
        raise ParameterError(f"{where}.config must be a shipped config name or a YAML path, got {name!r}")
    overrides = _overrides(where, value)
    paper = value.get("paper")
    if paper is not None and paper not in paper_rows():
        raise ParameterError(f"{where}.paper must be null or one of the paper's rows: {', '.join(paper_rows())}; got {paper!r}")
    try:
        config = load_config(name, overrides)
        config.validate()
        _check_builds(config, require_data=require_data)
    except ValueError as error:
        raise ParameterError(f"{where} ({label!r}): {error}") from None
    root = config.data.data_root
    if require_data and root is not None and not Path(root).is_dir():
        raise ParameterError(f"{where} ({label!r}): data.data_root={root!r} is not a folder on this machine")
    return Row(label, config, paper)
