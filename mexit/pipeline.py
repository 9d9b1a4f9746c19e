"""A run obtained: loaded from the store where it is there, trained (or resumed) into it where not.

:func:`train_or_load` is the one way every caller (the CLI, the book, the sweeps, the notebooks'
helpers) gets a run. A run's phases are trained in order, each under a file lock on its phase
folder: disjoint (P1, P3) and mixed (P1, P2) of the same seed train P1 once, and two processes
asking for the same run take turns, the second finding the first one's result. Data and model are
made before anything is stored, so a missing dataset or a bad placement fails first.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mexit import checkpoint, data, distributed
from mexit.config import RunConfig
from mexit.models import build_model
from mexit.store import Run, RunStore, phase_keys

if TYPE_CHECKING:
    import torch
    from torch import nn

    from mexit.train import Probe


NO_TRAIN_VARIABLE = "MEXIT_NO_TRAIN"
"""Set to ``1`` (``mexit book --no-train``), :func:`train_or_load` refuses to train: it loads or raises :class:`RunMissing`."""


class RunMissing(RuntimeError):
    """A run that must be loaded is not in the store, and training is off (:data:`NO_TRAIN_VARIABLE`)."""


def train_or_load(store: RunStore, config: RunConfig, *, device: str = "auto", progress_label: str = "") -> Run:
    """The run of ``config`` in ``store``: loaded if stored, resumed if interrupted, trained otherwise.
    ``progress_label`` prefixes the progress lines of its phases. With ``$MEXIT_NO_TRAIN=1`` a run
    that is not stored raises :class:`RunMissing` naming it and the command that trains it."""
    config.validate()
    stored = store.load(config)
    if stored is not None:
        return stored
    if os.environ.get(NO_TRAIN_VARIABLE) == "1":
        raise RunMissing(
            f"run {config.key()} ({progress_label.strip() or config.train.regime}) is not in the store {store.root}, and "
            f"training is off (--no-train): train every run the book reads first, with 'mexit sweep --profile PROFILE' "
            "(or 'mexit book' without --no-train), or give this page only parameters whose runs 'mexit plan' lists"
        )
    from mexit.train import seed_everything

    ctx = distributed.context(device)
    config.train.check_world_size(ctx.world_size)
    if config.model.method == "l2w" and ctx.world_size > 1:
        raise ValueError("model.method=l2w trains on one process only: its weight network is not synchronised across ranks")
    splits = data.load(config.data, holdout=config.train.holds_out_validation)
    seed_everything(config.train.seed)
    model = build_model(config, splits.input_shape, splits.num_classes).to(ctx.device)
    with store.lock(store.run_dir(config), ctx.is_main):
        stored = store.load(config)
        if stored is not None:
            return stored
        records = _train_phases(store, config, ctx, progress_label, splits, model)
        if ctx.is_main:
            _finish(store, config, ctx, splits, model, records)
    ctx.barrier()
    return Run(store.run_dir(config))


def _train_phases(
    store: RunStore, config: RunConfig, ctx: distributed.DistContext, label: str, splits: data.Splits, model: torch.nn.Module
) -> list[dict[str, Any]]:
    """Train (or load) each phase of ``config`` into ``model``; every phase's stored record."""
    from mexit.train import train_phase

    if ctx.is_main:
        store.begin_run(config)
    records = []
    for index, key in enumerate(phase_keys(config)):
        with store.lock(store.phase_dir(key), ctx.is_main):
            # Rank 0 decides whether the phase must be trained; every rank follows it.
            stored = store.load_phase(key) if ctx.is_main else None
            if not ctx.broadcast_object(stored is not None):
                result = train_phase(
                    model, index, splits.train, splits.stopping_val, config.train, config.model.method, ctx,
                    partial_path=store.phase_dir(key) / "partial.pt",
                    probe=dominance_probe(config, splits) if config.train.dominance_every else None,
                    label=label,
                )
                stored = {"model": result.state}
                if ctx.is_main:
                    store.save_phase(key, result)
            ctx.barrier()
        if not ctx.is_main:
            stored = checkpoint.load_tensors(store.phase_dir(key) / "state.pt")
        model.load_phase_state(stored["model"])
        records.append(store.phase_record(key))
    return records


def _finish(
    store: RunStore, config: RunConfig, ctx: distributed.DistContext, splits: data.Splits, model: torch.nn.Module,
    records: list[dict[str, Any]],
) -> None:
    """The trained model's test (and validation) logits, costs and metrics, stored: the run is finished."""
    from mexit.evaluate.sweeps import exit_accuracy
    from mexit.evaluate.inference import collect_logits, evaluation_split
    from mexit.flops import exit_costs

    batch, workers = config.train.eval_batch_size, config.train.num_workers
    test, test_labels = collect_logits(model, evaluation_split(splits.test, config.train), batch, ctx.device, workers)
    logits = {"test": test, "test_labels": test_labels}
    accuracy = {"test_acc": exit_accuracy(test, test_labels).tolist(), "val_acc": None}  # the model's, before rounding
    if len(splits.val):  # no validation split without early stopping under the authors' rule
        val, val_labels = collect_logits(model, evaluation_split(splits.val, config.train), batch, ctx.device, workers)
        logits.update(val=val, val_labels=val_labels)
        accuracy["val_acc"] = exit_accuracy(val, val_labels).tolist()
    costs = exit_costs(model.cpu(), splits.input_shape)
    metrics = {
        **accuracy,
        "phase_wall_time_s": [r["wall_time_s"] for r in records],
        "phase_epochs_run": [r["epochs_run"] for r in records],
        "phase_stopped_early": [r["stopped_early"] for r in records],
        "phases": list(config.train.phase_list),
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "device": str(ctx.device),
        "world_size": ctx.world_size,
    }
    store.finish_run(config, logits, {"macs": list(costs.macs), "backbone_macs": costs.backbone_macs, "unit": "MACs"}, metrics)


def trained_model(run: Run, device: str | torch.device = "cpu") -> nn.Module:
    """The stored ``run``'s trained multi-exit model, in eval mode on ``device``: built from its
    config and its phases' states loaded in order."""
    model = build_model(run.config, tuple(run.metrics["input_shape"]), run.metrics["num_classes"])
    for state in run.phase_states():
        model.load_phase_state(state)
    return model.to(device).eval()


def dominance_probe(config: RunConfig, splits: data.Splits) -> Probe:
    """The gradient-dominance probe a run's P2 records (:func:`mexit.dominance.training_probe`):
    on 256 training images with evaluation transforms, or on one evaluation's worth where
    ``train.eval_batches`` caps the evaluations (a smoke run)."""
    from mexit.dominance import training_probe
    from mexit.evaluate.inference import evaluation_size

    return training_probe(splits.train_eval, seed=config.train.seed, probe_size=max(2, evaluation_size(256, config.train)))
