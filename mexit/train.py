"""One training loop for every phase: early stopping, resumable checkpoints, DDP, progress.

Convergence is early stopping on the validation split, by one of two rules (``train.stopping``):

- ``restore-best`` (ours): every phase is evaluated every ``min(batches per epoch, 300)`` steps; a head's counter
  grows at every evaluation that does not improve its best accuracy (a tie counts); the heads
  tracked are those in the phase's loss; when a phase ends with ``patience`` set, by stopping or at
  its epoch cap, the best state is reloaded. Without ``patience`` the phase still evaluates (the
  validation curves) and keeps its last state.
- ``restore-on-stop`` (the authors' code's ``EarlyStopperEarlyExit``): P1 is evaluated every epoch, P2 and P3
  every ``min(batches per epoch, 300)`` steps; a counter grows only when a head's accuracy falls
  below its best (a tie does not count); every head the phase computes is tracked, the frozen final
  head in P3 included; the best state is reloaded only when the phase stops early (the last state is
  kept at the epoch cap). Without ``patience`` there is no validation split and no evaluation.

(The earlier spellings ``ours`` and ``authors`` are read as these.) Under both, the state is kept whenever any tracked head improves, and a phase stops when every
tracked head's counter has reached ``patience``. ``train.eval_every`` overrides the cadence.

Each epoch's shuffling and augmentation are seeded from ``(seed, phase, epoch)``; a resume point is
written after a phase's first epoch and then at most every :data:`RESUME_INTERVAL_S` seconds, at an
epoch's end, so a phase killed at any point resumes from its last one and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mexit import checkpoint
from mexit.config import OptimConfig, TrainConfig
from mexit.data.loading import batch_loader
from mexit.distributed import DistContext
from mexit.evaluate.inference import evaluation_split, validation_accuracy
from mexit.progress import PhaseProgress
from mexit.regimes import PHASE_SPECS, Phase, apply_phase, default_weighting, exit_weights, multi_exit_loss
from mexit.sample_weighting import META_INTERVAL, LearnedWeighting, per_sample_losses

Probe = Callable[[nn.Module, int, Tensor], list[dict[str, Any]]]
"""``probe(model, step, weights)``: rows measured on the model; ``weights`` [num_exits] of the step's loss."""


class TrainingDiverged(RuntimeError):
    """The loss or the weights became inf or nan; the message names the phase, epoch and step."""


@dataclass
class PhaseResult:
    """What one finished phase leaves: the kept weights and how it got there."""

    state: dict[str, Tensor]
    trace: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    wall_time_s: float
    epochs_run: int
    steps: int
    stopped_early: bool
    best_step: int


@dataclass
class _PhaseState:
    """Everything the loop needs to resume a phase: what a resume point saves (:data:`RESUME_INTERVAL_S`)."""

    epoch: int = 0
    step: int = 0
    wall_time_s: float = 0.0
    best_acc: list[float] = field(default_factory=list)
    bad_evals: list[int] = field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    best_step: int = 0
    stopped_early: bool = False
    trace: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: Tensor | None = None  # per-exit training loss summed since the last evaluation
    loss_steps: int = 0


RESUME_INTERVAL_S = 30.0
"""A phase that goes on writes its resume point after its first epoch, then after the first epoch
that ends this many seconds after the last one: an interruption loses at most about this much
training, and a quick run's one-second epochs do not each pickle the model, the optimiser, the best
state and the growing trace (about 6% of a quick run, written every epoch). Where a phase resumes
does not change what it trains (tested)."""

_WEIGHTING_SEED = 1_000_003  # seeds L2W's weight network apart from every epoch's seeds


class HeadView:
    """The exits a phase's forward pass computes: all of them, or (a phase without ICs, P1) the
    final exit alone, named ``"final"`` in the trace so that one P1 fits every IC configuration."""

    def __init__(self, num_exits: int, with_ics: bool):
        self.exits = list(range(num_exits)) if with_ics else [num_exits - 1]
        self.names = [str(i) for i in self.exits] if with_ics else ["final"]
        self.with_ics = with_ics

    def positions(self, exits: Sequence[int]) -> list[int]:
        """Where ``exits`` (indices among all exits) are in the forward pass's output."""
        return [self.exits.index(i) for i in exits]

    def name(self, exit_index: int) -> str:
        return self.names[self.exits.index(exit_index)]

    def state(self, model: nn.Module) -> dict[str, Tensor]:
        """The state the phase changes: the whole model's, or the backbone's without ICs."""
        return model.state_dict() if self.with_ics else model.backbone_state_dict()


def seed_everything(*parts: int) -> int:
    """Seed torch, numpy and random from a tuple of integers; returns the derived seed. The tuple's
    length leads it into the seed sequence, which alone would read ``(s, p, e)`` and ``(s, p, e, 0)``
    (or ``(s)`` and ``(s, 0, 0)``) as one seed: its short entropy is padded with zeros."""
    seed = int(np.random.SeedSequence([len(parts), *parts]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


def epoch_batches(
    num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
) -> list[list[int]]:
    """This rank's share of every global batch of one epoch, from a seeded permutation.

    The last, incomplete global batch is kept, unless ``drop_last`` or it cannot give every rank a
    sample (then ranks would disagree on the number of steps).
    """
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[start : start + batch_size] for start in range(0, num_samples, batch_size)]
    if batches and len(batches[-1]) < batch_size and (drop_last or len(batches[-1]) < world_size):
        batches.pop()
    return [batch[rank::world_size] for batch in batches]


def _phase_over(state: _PhaseState, max_epochs: int, config: TrainConfig) -> bool:
    """Whether a phase in ``state`` has ended: at its epoch cap, stopped early or at its step cap."""
    return state.epoch >= max_epochs or state.stopped_early or at_step_cap(config, state.step)


def at_step_cap(config: TrainConfig, step: int) -> bool:
    """Whether a phase has taken the ``config.max_steps`` optimiser steps that end it (never, without a cap)."""
    return config.max_steps is not None and step >= config.max_steps


def learning_rate(optim: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up for ``warmup_epochs``, then cosine to ``min_lr`` (or constant)."""
    warmup = optim.warmup_epochs * steps_per_epoch
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    if optim.schedule == "constant":
        return optim.lr
    fraction_done = (step - warmup) / max(1, total_steps - warmup)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * min(1.0, fraction_done)))


def make_optimizer(params: Sequence[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


def loss_exits(config: TrainConfig, phase_index: int, num_exits: int) -> list[int]:
    """The exits (0-based; the final one is ``num_exits - 1``) whose losses a phase averages:
    the phase's own (:meth:`Phase.exits_in_loss`), and in P3 with ``p3_loss=all_heads`` (the
    authors') the frozen final head's constant term too."""
    name = config.phase_list[phase_index]
    if name == "P3" and config.p3_loss == "all_heads":
        return list(range(num_exits))
    return PHASE_SPECS[name].exits_in_loss(num_exits)


def evaluation_interval(config: TrainConfig, phase_index: int, batches_per_epoch: int) -> int | None:
    """Steps between a phase's validations (see the module's docstring), or ``None`` for none:
    ``train.eval_every`` when set, else ``min(batches per epoch, 300)``; under the authors' rule
    every epoch in P1, and never without ``patience``."""
    if config.stopping == "restore-on-stop":
        if config.patience is None:
            return None
        if config.eval_every is None and config.phase_list[phase_index] == "P1":
            return batches_per_epoch
    return config.eval_every or min(batches_per_epoch, 300)


def stopping_plan(config: TrainConfig, phase_index: int) -> str:
    """How a phase is evaluated and stopped (:func:`evaluation_interval`), in words, as
    ``mexit train --dry-run`` shows it."""
    if config.stopping == "restore-on-stop" and config.patience is None:
        return "no validation (authors' rule without patience); the last state is kept"
    if config.eval_every is not None:
        cadence = f"every {config.eval_every} steps"
    elif config.stopping == "restore-on-stop" and config.phase_list[phase_index] == "P1":
        cadence = "every epoch"
    else:
        cadence = "every min(batches per epoch, 300) steps"
    if config.patience is None:
        return f"validation {cadence}, no early stopping; the last state is kept"
    if config.stopping == "restore-on-stop":
        rule = "ties do not count, every computed head tracked, the best state reloaded only after an early stop"
    else:
        rule = "ties count, the heads in the loss tracked, the best state reloaded"
    return f"validation {cadence}, patience {config.patience} ({config.stopping}: {rule})"


def equilibrium_on(config: TrainConfig, phase_index: int) -> bool:
    """Whether gradient equilibrium acts in a phase: when it is on and the phase trains backbone and ICs together."""
    phase = PHASE_SPECS[config.phase_list[phase_index]]
    return config.gradient_equilibrium and phase.trains_backbone and phase.trains_ics


def sums_exit_losses(config: TrainConfig, phase_index: int) -> bool:
    """Whether a phase trains on the sum of the exits' losses (IMTA's gradient equilibrium)
    instead of their weighted mean."""
    return equilibrium_on(config, phase_index) and config.equilibrium == "coarsest-scale"


def loss_scheme(config: TrainConfig, method: str) -> str:
    """The exits' loss weighting: ``train.loss_weights``, or the method's own when it says ``auto``."""
    return default_weighting(method) if config.loss_weights == "auto" else config.loss_weights


def phase_plan(config: TrainConfig, method: str, num_exits: int) -> list[dict[str, Any]]:
    """What each phase of a run trains and how, as ``mexit train --dry-run`` shows it: the
    phase, what trains, its epoch cap, optimiser settings, and the exits in its loss (1-based,
    ``H`` the final head) with their weights."""
    rows = []
    for index, name in enumerate(config.phase_list):
        phase, optim = PHASE_SPECS[name], config.optim_for(index)
        exits = loss_exits(config, index, num_exits)
        scheme = loss_scheme(config, method)
        summed = sums_exit_losses(config, index)
        if method == "l2w" and phase.trains_ics:
            weights = "learned per sample (L2W)"
        else:
            values = exit_weights(scheme, exits, num_exits, fraction_done=1.0) * (len(exits) if summed else 1)
            weights = f"{scheme}{' x the exits, summed (IMTA)' if summed else ''}: " + " ".join(f"{w:.3g}" for w in values.tolist())
        trains = " + ".join(part for part, on in (("backbone", phase.trains_backbone), ("ICs", phase.trains_ics)) if on)
        rows.append(
            {
                "phase": name,
                "trains": trains,
                "epochs": config.phase_epochs[index],
                "optimizer": optim.optimizer,
                "lr": optim.lr,
                "momentum": optim.momentum,
                "weight_decay": optim.weight_decay,
                "schedule": f"{optim.schedule} (min {optim.min_lr:g}, warm-up {optim.warmup_epochs})",
                "batch": optim.batch_size,
                "loss_exits": " ".join("H" if i == num_exits - 1 else str(i + 1) for i in exits),
                "loss_weights": weights,
                "stopping": stopping_plan(config, index),
            }
        )
    return rows


@dataclass(frozen=True)
class PhaseSetup:
    """What one phase of a run is, fixed before its first step (:func:`phase_setup`)."""

    index: int
    name: str
    spec: Phase
    optim: OptimConfig
    max_epochs: int
    exits: list[int]  # the exits whose losses the phase optimises
    scheme: str  # their loss weighting (:func:`loss_scheme`)
    heads: HeadView  # the exits the phase computes
    summed: bool  # IMTA's summed loss (:func:`sums_exit_losses`)


def phase_setup(config: TrainConfig, phase_index: int, method: str, num_exits: int) -> PhaseSetup:
    """Phase ``phase_index`` of ``config`` on a model of ``num_exits`` exits.

    A phase without ICs (P1) does not compute them, and keeps and restores the backbone's state
    only: its result does not depend on the ICs, so one P1 serves every IC configuration."""
    name = config.phase_list[phase_index]
    spec = PHASE_SPECS[name]
    return PhaseSetup(
        index=phase_index,
        name=name,
        spec=spec,
        optim=config.optim_for(phase_index),
        max_epochs=config.phase_epochs[phase_index],
        exits=loss_exits(config, phase_index, num_exits),
        scheme=loss_scheme(config, method),
        heads=HeadView(num_exits, with_ics=spec.trains_ics),
        summed=sums_exit_losses(config, phase_index),
    )


@contextmanager
def phase_mode(model: nn.Module, config: TrainConfig, phase_index: int) -> Iterator[None]:
    """``model`` set up for a phase (:func:`~mexit.regimes.apply_phase`: what trains; whether the
    ICs compute; gradient equilibrium), and set back to its defaults afterwards."""
    phase = PHASE_SPECS[config.phase_list[phase_index]]
    handle = apply_phase(model, phase)
    model.ics_active = phase.trains_ics
    model.gradient_equilibrium = equilibrium_on(config, phase_index)
    model.equilibrium = config.equilibrium
    try:
        yield
    finally:
        handle.remove()
        model.ics_active = True
        model.gradient_equilibrium = False
        model.equilibrium = "whole-output"


def train_phase(
    model: nn.Module,
    phase_index: int,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    method: str,
    dist: DistContext,
    partial_path: Path | None = None,
    probe: Probe | None = None,
    label: str = "",
) -> PhaseResult:
    """Train ``model`` (a :class:`~mexit.models.MultiExit`, already on ``dist.device``) for one phase.

    ``partial_path`` is where the resume point lives, written after an epoch where one is due
    (:data:`RESUME_INTERVAL_S`; only rank 0 writes it).
    ``probe(model, step, weights)`` is called before the first step and every
    ``config.dominance_every`` steps of a phase that trains backbone and ICs together (P2), with
    every exit's weight in that step's loss; its rows are kept, with the phase's name, and its time
    is left out of the phase's wall time.
    """
    setup = phase_setup(config, phase_index, method, model.num_exits)
    with phase_mode(model, config, phase_index):
        loop = _PhaseLoop.start(model, setup, train_set, val_set, config, method, dist, probe)
        state = loop.resume(partial_path, label)
        bar = PhaseProgress(f"{label}{setup.name}", setup.max_epochs, enabled=dist.is_main, start=state.epoch)
        try:
            while not _phase_over(state, setup.max_epochs, config):
                loop.run_epoch(state)
                loop.end_epoch(state, bar, partial_path)
        finally:
            bar.close()
    return kept_state(model, state, config, setup.heads)


def kept_state(model: nn.Module, state: _PhaseState, config: TrainConfig, heads: HeadView) -> PhaseResult:
    """What a finished phase leaves: its best state where early stopping keeps it (the module's
    docstring: under the authors' rule only after an early stop), else its last."""
    restore_best = config.patience is not None and state.best_state is not None
    if config.stopping == "restore-on-stop":  # at the epoch cap the authors' loop keeps the last state
        restore_best = restore_best and state.stopped_early
    if restore_best:
        model.load_phase_state(state.best_state)
    return PhaseResult(
        state={k: v.detach().cpu().clone() for k, v in heads.state(model).items()},
        trace=state.trace,
        probes=state.probes,
        wall_time_s=state.wall_time_s,
        epochs_run=state.epoch,
        steps=state.step,
        stopped_early=state.stopped_early,
        best_step=state.best_step if restore_best else state.step,
    )


@dataclass
class _PhaseLoop:
    """One phase's training objects, and the steps of its loop: :meth:`resume`, :meth:`run_epoch`
    (:meth:`batch_loss`, :meth:`optimizer_step`, probes and evaluations), :meth:`end_epoch`."""

    model: nn.Module
    network: nn.Module  # the model, or its DDP wrapper
    setup: PhaseSetup
    config: TrainConfig
    dist: DistContext
    train_set: Dataset
    val_set: Dataset
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    weighting: LearnedWeighting | None
    mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None
    probe: Probe | None
    drop_last: bool
    global_batches: int
    eval_every: int | None
    resume_written_at: float | None = None  # time.monotonic() of this process's last resume point

    @classmethod
    def start(
        cls, model: nn.Module, setup: PhaseSetup, train_set: Dataset, val_set: Dataset, config: TrainConfig,
        method: str, dist: DistContext, probe: Probe | None,
    ) -> _PhaseLoop:
        """The loop of a phase whose :func:`phase_mode` ``model`` is in: optimiser (over what
        trains), DDP wrapper, L2W's weight network, mixup, and the batch geometry."""
        params = [p for p in model.parameters() if p.requires_grad]
        network: nn.Module = model
        if dist.enabled:
            network = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        weighting = None
        if method == "l2w" and setup.spec.trains_ics:  # L2W's meta-learned sample weights replace the loss weights
            seed_everything(config.seed, setup.index, _WEIGHTING_SEED)
            weighting = LearnedWeighting(len(setup.exits), model.num_exits).to(dist.device)
        mixup = _mixup(setup.optim, model.num_classes)
        drop_last = mixup is not None  # mixup pairs samples: every batch must be full (and even)
        global_batches = len(epoch_batches(len(train_set), setup.optim.batch_size, 0, 0, dist.world_size, drop_last))  # type: ignore[arg-type]
        # Gradient dominance is measured where exits compete for the backbone: phases training both.
        probing = probe is not None and config.dominance_every > 0 and setup.spec.trains_backbone and setup.spec.trains_ics
        return cls(
            model, network, setup, config, dist, train_set, val_set, params, make_optimizer(params, setup.optim),
            weighting, mixup, probe if probing else None, drop_last, global_batches,
            evaluation_interval(config, setup.index, global_batches),
        )

    @property
    def total_steps(self) -> int:
        return self.global_batches * self.setup.max_epochs

    def resume(self, partial_path: Path | None, label: str) -> _PhaseState:
        """The phase's state: from its resume point at ``partial_path`` (weights, optimiser and
        L2W state restored), or from its start."""
        outputs = len(self.setup.heads.names)
        state = _PhaseState(best_acc=[-1.0] * outputs, bad_evals=[0] * outputs, loss_sum=torch.zeros(outputs))
        saved = checkpoint.load_or_quarantine(partial_path) if partial_path is not None else None
        if saved is None:
            return state
        self.model.load_phase_state(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        state = _PhaseState(**saved["state"])
        if self.dist.is_main:
            print(f"[{label}{self.setup.name}] resuming after epoch {state.epoch} of {self.setup.max_epochs} "
                  f"(step {state.step}) from {partial_path}", file=sys.stderr, flush=True)
        if self.weighting is not None:
            self.weighting.load(saved["weighting"])
        return state

    def run_epoch(self, state: _PhaseState) -> None:
        """One epoch of optimiser steps (seeded shuffling and augmentation), with the probes and
        evaluations that fall in it; it ends early when the phase stops or reaches its step cap."""
        setup, config, dist = self.setup, self.config, self.dist
        started = time.perf_counter()
        order_seed = seed_everything(config.seed, setup.index, state.epoch)
        batches = epoch_batches(len(self.train_set), setup.optim.batch_size, order_seed, dist.rank, dist.world_size, self.drop_last)  # type: ignore[arg-type]
        seed_everything(config.seed, setup.index, state.epoch, dist.rank)  # augmentation, per rank
        if self.probe is not None and state.step == 0:  # the state P2 starts from, before its first step
            weights = exit_weights(setup.scheme, setup.exits, self.model.num_exits, 0.0)
            started += _record_probe(self.probe, self.model, state, setup.name, setup.exits, weights)
        self.model.train()
        for images, targets in batch_loader(self.train_set, batches, config.num_workers):
            images, targets = images.to(dist.device), torch.as_tensor(targets).to(dist.device)
            loss, per_exit, weights = self.batch_loss(images, targets, state)
            self.optimizer_step(loss)
            state.step += 1
            state.loss_sum += per_exit.float().cpu()
            state.loss_steps += 1
            if self.probe is not None and state.step % config.dominance_every == 0:
                started += _record_probe(self.probe, self.model, state, setup.name, setup.exits, weights)
            if self.eval_every is not None and state.step % self.eval_every == 0:
                self.evaluate(state)
                if state.stopped_early:
                    break
            if at_step_cap(config, state.step):
                break
        at_a_cap = at_step_cap(config, state.step) or state.epoch + 1 == setup.max_epochs
        if at_a_cap and self.eval_every is not None and state.step % self.eval_every:  # the state a cap leaves, evaluated once
            self.evaluate(state)
        state.epoch += 1
        state.wall_time_s += time.perf_counter() - started

    def batch_loss(self, images: Tensor, targets: Tensor, state: _PhaseState) -> tuple[Tensor, Tensor, Tensor]:
        """The step's loss, each exit's loss in it, and the exits' weights: mixup, L2W's meta step
        and weighted loss, bf16 autocast on CUDA, IMTA's sum, the method's auxiliary term. Raises
        :class:`TrainingDiverged` on a loss that is not finite."""
        setup, optim, model = self.setup, self.setup.optim, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(optim, state.step, self.total_steps, self.global_batches)
        smoothing = optim.label_smoothing
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
            smoothing = 0.0
        weights = exit_weights(setup.scheme, setup.exits, model.num_exits, state.step / max(1, self.total_steps))
        weighting = self.weighting
        if weighting is not None and state.step % META_INTERVAL == 0 and len(images) >= 4:
            half = len(images) // 2  # L2W: the first half trains, the second scores a virtual step
            weighting.meta_step(model, images[:half], targets[:half], images[half:], targets[half:], setup.exits, smoothing)
            images, targets = images[:half], targets[:half]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=optim.bf16 and self.dist.device.type == "cuda"):
            logits = self.network(images)
            loss, per_exit = multi_exit_loss(logits, targets, setup.heads.positions(setup.exits), weights, smoothing)
            if weighting is not None:
                loss = weighting.weighted_loss(per_sample_losses(logits, targets, setup.exits, smoothing))
            if setup.summed:
                loss = loss * len(setup.exits)
            if setup.spec.trains_ics:
                extra = model.auxiliary_loss(logits, targets)
                if extra is not None:
                    loss = loss + extra
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged in {setup.name}, epoch {state.epoch + 1}, step {state.step + 1}: the loss is "
                f"{float(loss.detach())} (lower train.optim.lr or set train.optim.clip_grad); nothing is stored as finished"
            )
        return loss, per_exit, weights

    def optimizer_step(self, loss: Tensor) -> None:
        """Back-propagate ``loss``, clip the gradients' norm where ``clip_grad`` is set, step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.setup.optim.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.params, self.setup.optim.clip_grad)
        self.optimizer.step()

    def evaluate(self, state: _PhaseState) -> None:
        setup = self.setup
        _evaluate(self.model, self.val_set, self.config, self.dist, state, setup.heads, setup.exits, setup.name)

    def end_epoch(self, state: _PhaseState, bar: PhaseProgress, partial_path: Path | None) -> None:
        """After an epoch: check that the weights are finite, show progress, and write the resume
        point where the phase goes on and one is due (:data:`RESUME_INTERVAL_S`; a finished phase is
        stored whole by its caller)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise TrainingDiverged(
                f"training diverged in {self.setup.name}, epoch {state.epoch}: weights are not finite after step "
                f"{state.step} (lower train.optim.lr or set train.optim.clip_grad); nothing is stored as finished"
            )
        heads = self.setup.heads
        bar.update(state.epoch, {f"e{i}": state.trace[-1][f"val_acc_{heads.name(i)}"] for i in self.setup.exits} if state.trace else {})
        now = time.monotonic()
        due = self.resume_written_at is None or now - self.resume_written_at >= RESUME_INTERVAL_S
        if due and partial_path is not None and self.dist.is_main and not _phase_over(state, self.setup.max_epochs, self.config):
            self.resume_written_at = now
            fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}  # saved as they are: no deep copy
            resume_point = {"model": heads.state(self.model), "optimizer": self.optimizer.state_dict(), "state": fields}
            if self.weighting is not None:
                resume_point["weighting"] = self.weighting.state()
            checkpoint.save_tensors(partial_path, resume_point)


def _record_probe(
    probe: Probe, model: nn.Module, state: _PhaseState, phase_name: str, exits: Sequence[int], weights: Tensor
) -> float:
    """Run ``probe`` at the current step, keep its rows; returns the seconds it took, which the
    phase's wall time leaves out (a measurement is not training)."""
    started = time.perf_counter()
    all_weights = torch.zeros(model.num_exits).index_put_((torch.tensor(list(exits)),), weights)
    rows = probe(model, state.step, all_weights)
    state.probes.extend({"phase": phase_name, **row} for row in rows)
    return time.perf_counter() - started


def _evaluate(
    model: nn.Module,
    val_set: Dataset,
    config: TrainConfig,
    dist: DistContext,
    state: _PhaseState,
    heads: HeadView,
    exits: Sequence[int],
    phase_name: str,
) -> None:
    """Validation accuracy of every exit the model computes (``heads``); updates the early-stopping
    state of the tracked heads (the module's docstring: ``exits`` under our rule, every computed
    head under the authors') and the trace. Under DDP each rank evaluates its shard (all ranks agree).
    """
    accuracy = validation_accuracy(
        model, evaluation_split(val_set, config), config.eval_batch_size, dist.device, num_workers=config.num_workers, dist=dist
    )
    train_loss = state.loss_sum / max(1, state.loss_steps)
    row: dict[str, Any] = {"phase": phase_name, "epoch": state.epoch, "step": state.step}
    row.update({f"train_loss_{name}": float(train_loss[i]) for i, name in enumerate(heads.names)})
    row.update({f"val_acc_{name}": float(accuracy[i]) for i, name in enumerate(heads.names)})
    state.trace.append(row)
    state.loss_sum = torch.zeros_like(state.loss_sum)
    state.loss_steps = 0
    improved = False
    positions = range(len(heads.names)) if config.stopping == "restore-on-stop" else heads.positions(exits)
    for i in positions:
        if accuracy[i] > state.best_acc[i]:
            state.best_acc[i] = float(accuracy[i])
            state.bad_evals[i] = 0
            improved = True
        elif accuracy[i] < state.best_acc[i] or config.stopping == "restore-best":  # the authors' ties do not count
            state.bad_evals[i] += 1
    if config.patience is None:
        return
    if improved:
        state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in heads.state(model).items()})
        state.best_step = state.step
    state.stopped_early = all(state.bad_evals[i] >= config.patience for i in positions)


def _mixup(optim: OptimConfig, num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    if optim.mixup <= 0 and optim.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=optim.mixup,
        cutmix_alpha=optim.cutmix,
        mode=optim.mixup_mode,
        label_smoothing=optim.label_smoothing,
        num_classes=num_classes,
    )
