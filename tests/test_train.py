"""The training loop's pieces: schedules, batches, and the recipe knobs of the paper's ViT runs."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch

from mexit.pipeline import train_or_load
from mexit.config import OptimConfig, load_config
from mexit.store import RunStore
from mexit.train import epoch_batches, learning_rate


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_epochs=2)
    steps_per_epoch, total = 10, 100
    assert learning_rate(optim, 0, total, steps_per_epoch) == pytest.approx(0.05)
    assert learning_rate(optim, 19, total, steps_per_epoch) == pytest.approx(1.0)
    assert learning_rate(optim, 20, total, steps_per_epoch) == pytest.approx(1.0)
    assert learning_rate(optim, 60, total, steps_per_epoch) == pytest.approx(0.55)
    assert learning_rate(optim, 100, total, steps_per_epoch) == pytest.approx(0.1)
    constant = OptimConfig(lr=0.3, schedule="constant")
    assert {learning_rate(constant, s, total, steps_per_epoch) for s in (0, 50, 99)} == {0.3}


def test_epoch_batches_partition_every_global_batch_between_ranks() -> None:
    single = epoch_batches(103, 10, seed=7)
    assert sorted(i for batch in single for i in batch) == list(range(103)) and len(single[-1]) == 3
    assert single == epoch_batches(103, 10, seed=7) and single != epoch_batches(103, 10, seed=8)
    ranks = [epoch_batches(103, 10, seed=7, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 11
    for step, batch in enumerate(single):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    assert len(epoch_batches(101, 10, seed=7, rank=1, world_size=2)) == 10  # a 1-sample last batch cannot be split
    assert all(len(b) == 10 for b in epoch_batches(103, 10, seed=7, drop_last=True))


def test_the_vit_recipe_knobs_train(tmp_path: Path) -> None:
    config = load_config(
        "tiny",
        [
            "train.regime=joint", "train.epochs=2", "train.optim.optimizer=adamw", "train.optim.lr=0.001",
            "train.optim.weight_decay=0.05", "train.optim.warmup_epochs=1", "train.optim.min_lr=0.000001",
            "train.optim.clip_grad=1.0", "train.optim.mixup=0.8", "train.optim.cutmix=1.0",
            "train.optim.label_smoothing=0.1", "train.loss_weights=sdn", "train.gradient_equilibrium=true",
        ],
    )  # fmt: skip
    run = train_or_load(RunStore(tmp_path), config)
    trace = run.trace()
    assert len(trace) == 2 and torch.isfinite(torch.tensor(trace.filter(like="train_loss").to_numpy())).all()
    assert max(run.metrics["test_acc"]) > 15  # above chance (10%) after two epochs


def test_mixup_needs_an_even_batch() -> None:
    with pytest.raises(ValueError, match="batch_size must be even"):
        load_config("tiny", ["train.optim.mixup=0.8", "train.optim.batch_size=127"]).validate()


def test_loader_workers_keep_runs_deterministic(tmp_path: Path) -> None:
    config = load_config("tiny", ["train.regime=joint", "train.num_workers=2"])
    first, second = (train_or_load(RunStore(tmp_path / name), config) for name in ("a", "b"))
    assert torch.equal(first.logits("test"), second.logits("test"))
    assert config.key() != load_config("tiny", ["train.regime=joint"]).key()


def test_mixup_cutmix_and_gradient_clipping_act_on_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spies on the loop's calls: every step's loss sees mixed (soft) targets, and every step clips
    the gradient norm at the configured value; without the knobs neither happens."""
    import mexit.train

    clipped: list[float] = []
    target_dims: list[int] = []
    real_clip, real_loss = torch.nn.utils.clip_grad_norm_, mexit.train.multi_exit_loss

    def clip(params: object, max_norm: float, *args: object, **kwargs: object) -> torch.Tensor:
        clipped.append(max_norm)
        return real_clip(params, max_norm, *args, **kwargs)

    def loss(logits: object, targets: torch.Tensor, *args: object, **kwargs: object) -> object:
        target_dims.append(targets.ndim)
        return real_loss(logits, targets, *args, **kwargs)

    monkeypatch.setattr(mexit.train.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(mexit.train, "multi_exit_loss", loss)
    knobs = ["train.optim.clip_grad=0.5", "train.optim.mixup=0.8", "train.optim.cutmix=1.0"]
    run = train_or_load(RunStore(tmp_path), load_config("tiny", ["train.regime=joint", "train.dominance_every=0", *knobs]))
    steps = int(run.phases()["steps"].sum())
    assert steps > 0 and clipped == [0.5] * steps
    assert target_dims == [2] * steps  # soft targets: mixup / cutmix on every batch
    clipped.clear()
    target_dims.clear()
    train_or_load(RunStore(tmp_path), load_config("tiny", ["train.regime=joint", "train.dominance_every=0"]))
    assert clipped == [] and set(target_dims) == {1}


def test_diverged_training_stops_with_its_phase_epoch_and_step_and_stores_nothing_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mexit.cli import main
    from mexit.train import TrainingDiverged

    config = load_config("tiny", ["train.regime=joint", "train.optim.lr=1e6", "train.dominance_every=0"])
    with pytest.raises(TrainingDiverged, match=r"training diverged in P2, epoch 1, step \d+: the loss is (nan|inf)"):
        train_or_load(RunStore(tmp_path), config)
    assert not (tmp_path / "runs" / config.key() / "metrics.json").exists()
    assert RunStore(tmp_path).runs() == []
    code = main(["--root", str(tmp_path), "train", "--config", "tiny", "train.regime=joint", "train.optim.lr=1e6"])
    err = capsys.readouterr().err
    assert code == 2 and "mexit: error: training diverged in P2, epoch 1" in err and "Traceback" not in err


def _replay_stopping(accuracy: np.ndarray, patience: int, ties_count: bool) -> int | None:
    """The evaluation (row) at which early stopping stops, replayed on recorded accuracies [evals, heads]."""
    best, bad = np.full(accuracy.shape[1], -1.0), np.zeros(accuracy.shape[1], dtype=int)
    for row, values in enumerate(accuracy):
        worse = values < best if not ties_count else values <= best
        bad = np.where(values > best, 0, np.where(worse, bad + 1, bad))
        best = np.maximum(best, values)
        if (bad >= patience).all():
            return row
    return None


def test_the_authors_early_stopping_lets_ties_pass_and_keeps_the_last_state_at_the_cap(tmp_path: Path) -> None:
    overrides = ["train.regime=joint", "train.epochs=30", "train.patience=2", "train.eval_every=2", "train.optim.lr=0.002",
                 "train.dominance_every=0", "train.stopping=restore-on-stop", "train.seed=3"]  # fmt: skip  (a seed whose curve holds a deciding tie)
    run = train_or_load(RunStore(tmp_path), load_config("tiny", overrides))
    accuracy = run.trace()[[f"val_acc_{i}" for i in range(3)]].to_numpy()
    stop = _replay_stopping(accuracy, patience=2, ties_count=False)
    assert stop == len(accuracy) - 1 and run.metrics["phase_stopped_early"] == [True]
    assert _replay_stopping(accuracy, patience=2, ties_count=True) != stop, "no tie decided anything: the test cannot tell the rules apart"
    # at the epoch cap (no early stop) the authors keep the last state, ours reloads the best one; the
    # last of the 33 steps falls between evaluations (every 4th), so the cap's state is evaluated
    # once more, and the best state may be that last one
    capped = ["train.regime=joint", "train.epochs=3", "train.patience=100", "train.eval_every=4", "train.dominance_every=0"]
    authors, ours = (train_or_load(RunStore(tmp_path), load_config("tiny", [*capped, f"train.stopping={rule}"])) for rule in ("restore-on-stop", "restore-best"))
    assert authors.metrics["phase_stopped_early"] == ours.metrics["phase_stopped_early"] == [False]
    assert authors.phases()["steps"].tolist() == [33] and authors.phases()["best_step"].tolist() == [33]
    assert ours.trace()["step"].tolist()[-2:] == [32, 33]  # the cap's state is evaluated, not thrown away unseen
    best = int(ours.phases()["best_step"].iloc[0])
    assert best in set(ours.trace()["step"])
    assert torch.equal(authors.logits("test"), ours.logits("test")) == (best == 33)


def test_the_authors_p3_tracks_the_frozen_final_head_which_only_augmented_validation_moves(tmp_path: Path) -> None:
    overrides = ["train.regime=disjoint", "train.epochs=[1, 2]", "train.patience=1", "train.eval_every=2", "train.dominance_every=0",
                 "train.stopping=restore-on-stop"]  # fmt: skip
    plain = train_or_load(RunStore(tmp_path), load_config("tiny", overrides))
    p3 = plain.trace().query("phase == 'P3'")
    assert p3["val_acc_2"].nunique() == 1  # frozen, evaluated on fixed images: every evaluation ties
    assert plain.metrics["phase_stopped_early"][1] is False  # its counter never grows, so P3 cannot stop early
    augmented = train_or_load(RunStore(tmp_path), load_config("tiny", [*overrides, "data.val_transform=train"]))
    assert augmented.trace().query("phase == 'P3'")["val_acc_2"].nunique() > 1  # augmented images: it moves


def test_the_authors_rule_evaluates_p1_every_epoch_and_never_without_patience(tmp_path: Path) -> None:
    from mexit import data
    from mexit.train import evaluation_interval

    authors = load_config("tiny", ["train.regime=mixed", "train.patience=5", "train.stopping=restore-on-stop"]).train
    ours = load_config("tiny", ["train.regime=mixed", "train.patience=5"]).train
    assert [evaluation_interval(authors, i, 1000) for i in (0, 1)] == [1000, 300]
    assert [evaluation_interval(ours, i, 1000) for i in (0, 1)] == [300, 300]
    assert [evaluation_interval(authors, i, 40) for i in (0, 1)] == [40, 40]
    # without patience the authors hold out nothing and evaluate nothing: every training image trains
    config = load_config("tiny", ["train.regime=joint", "train.dominance_every=0", "train.stopping=restore-on-stop"])
    assert not config.train.holds_out_validation and evaluation_interval(config.train, 0, 40) is None
    run = train_or_load(RunStore(tmp_path), config)
    assert run.trace().empty and not run.has_validation and run.outputs().val_logits is None
    assert run.metrics["val_acc"] is None
    with pytest.raises(ValueError, match="has no validation split"):
        run.logits("val")
    held, whole = data.load(config.data), data.load(config.data, holdout=False)
    assert len(whole.train) == len(held.train) + len(held.val) and len(whole.val) == 0
    assert abs(data.train_images(config.data, holdout=False) - len(whole.train)) <= 1  # "about": the split rounds


def test_mixup_mode_is_passed_to_timm_and_checked() -> None:
    from mexit.train import _mixup

    assert _mixup(OptimConfig(mixup=0.8, cutmix=1.0, mixup_mode="elem"), 10).mode == "elem"
    assert _mixup(OptimConfig(mixup=0.8), 10).mode == "batch"
    with pytest.raises(ValueError, match="mixup_mode 'sample'; allowed: batch, pair, elem"):
        load_config("tiny", ["train.optim.mixup_mode=sample"]).validate()
    with pytest.raises(ValueError, match="train.stopping 'theirs'; allowed: restore-best, restore-on-stop"):
        load_config("tiny", ["train.stopping=theirs"]).validate()
    with pytest.raises(ValueError, match="data.val_transform must be one of"):
        load_config("tiny", ["data.val_transform=augmented"]).validate()


def test_equilibrium_scales_the_whole_output_or_the_coarsest_scale() -> None:
    with pytest.raises(ValueError, match="unknown train.equilibrium 'li'; allowed: whole-output, coarsest-scale"):
        load_config("tiny", ["train.equilibrium=li"]).validate()


def test_equilibrium_keys_p2_and_leaves_p1_shared() -> None:
    from mexit.store import phase_keys

    ours, imta = (phase_keys(load_config("tiny", ["train.gradient_equilibrium=true", f"train.equilibrium={rule}"]))
                  for rule in ("whole-output", "coarsest-scale"))
    assert ours[0] == imta[0] and ours[1] != imta[1]  # mixed: P1, P2


class _FirstStep(Exception):
    """Raised by a spy to end training once the first step's gradient is measured."""


def test_imta_equilibrium_trains_on_the_sum_of_the_exits_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a chain backbone IMTA's rule scales gradients as ours (tests/test_models.py), so the
    first P2 step's gradient norm under it is the number of exits in the loss (tiny: 2 ICs and the
    final head) times ours; without gradient equilibrium the option changes nothing."""
    import mexit.train

    norms: dict[tuple[str, str], float] = {}
    real_clip = torch.nn.utils.clip_grad_norm_

    def first_norm(params: object, max_norm: float, *args: object, **kwargs: object) -> NoReturn:
        raise _FirstStep(float(real_clip(params, max_norm, *args, **kwargs)))

    monkeypatch.setattr(mexit.train.nn.utils, "clip_grad_norm_", first_norm)
    base = ["train.regime=joint", "train.dominance_every=0", "train.optim.clip_grad=1e9"]  # measures, never clips
    for equilibrium in ("true", "false"):
        for rule in ("whole-output", "coarsest-scale"):
            config = load_config("tiny", [*base, f"train.gradient_equilibrium={equilibrium}", f"train.equilibrium={rule}"])
            with pytest.raises(_FirstStep) as stop:
                train_or_load(RunStore(tmp_path / equilibrium / rule), config)
            norms[equilibrium, rule] = stop.value.args[0]
    assert norms["true", "coarsest-scale"] == pytest.approx(3 * norms["true", "whole-output"], rel=1e-5)
    assert norms["false", "coarsest-scale"] == norms["false", "whole-output"] != norms["true", "whole-output"]


def test_the_dry_run_shows_imtas_summed_loss() -> None:
    from mexit.train import phase_plan

    config = load_config("tiny", ["train.regime=mixed", "train.gradient_equilibrium=true", "train.equilibrium=coarsest-scale"]).train
    p1, p2 = phase_plan(config, "sdn", num_exits=3)
    assert p1["loss_weights"] == "uniform: 1" and p2["loss_weights"] == "uniform x the exits, summed (IMTA): 1 1 1"


def test_a_step_cap_ends_every_phase_and_evaluations_read_their_first_batches(tmp_path: Path) -> None:
    """train.max_steps ends each phase after that many optimiser steps (its last state evaluated
    once), whatever its epoch cap; train.eval_batches limits early stopping's evaluations and the
    stored logits to the first batches of their splits; gradient dominance is probed at its steps."""
    capped = ["train.regime=mixed", "train.epochs=5", "train.patience=3", "train.max_steps=3", "train.eval_batches=2",
              "train.eval_batch_size=16", "train.optim.batch_size=32", "train.dominance_every=1"]
    run = train_or_load(RunStore(tmp_path), load_config("tiny", capped))
    phases = run.phases()
    assert phases["steps"].tolist() == [3, 3] and phases["epochs_run"].tolist() == [1, 1]
    assert phases["epoch_cap"].tolist() == [5, 5] and not phases["stopped_early"].any()
    assert run.trace()["step"].tolist() == [3, 3]  # one evaluation a phase, of the state the cap left
    assert len(run.labels("test")) == 32 and len(run.labels("val")) == 32
    assert sorted(run.probes()["step"].unique().tolist()) == [0, 1, 2, 3]
    uncapped = train_or_load(RunStore(tmp_path), load_config("tiny", capped[:3]))
    assert len(uncapped.labels("test")) > 32 and uncapped.key != run.key


def test_step_and_evaluation_caps_are_checked() -> None:
    for name in ("max_steps", "eval_batches"):
        with pytest.raises(ValueError, match=f"train.{name} must be >= 1"):
            load_config("tiny", [f"train.{name}=0"]).validate()


def test_resume_points_are_written_only_where_the_phase_goes_on_and_one_is_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume point (partial.pt) is written after a phase's first epoch, then after the first
    epoch ending RESUME_INTERVAL_S after the last one, never after a phase's last epoch: a finished
    phase is stored whole, so its last resume point would be written to be deleted."""
    from mexit import checkpoint, train

    written: list[str] = []
    save = checkpoint.save_tensors

    def recording(path: Path, tensors: dict) -> None:
        written.append(Path(path).name)
        save(path, tensors)

    monkeypatch.setattr(checkpoint, "save_tensors", recording)
    three_epochs = load_config("tiny", ["train.regime=joint", "train.epochs=3", "train.patience=null", "train.dominance_every=0"])
    train_or_load(RunStore(tmp_path / "default"), three_epochs)
    assert written.count("partial.pt") == 1  # three sub-second epochs: after the first only
    written.clear()
    monkeypatch.setattr(train, "RESUME_INTERVAL_S", 0.0)
    train_or_load(RunStore(tmp_path / "every"), three_epochs)
    assert written.count("partial.pt") == 2  # always due: after epochs 1 and 2, not after the last
    written.clear()
    train_or_load(RunStore(tmp_path / "capped"), load_config("tiny", ["train.regime=mixed", "train.epochs=3", "train.max_steps=1"]))
    assert "partial.pt" not in written  # each phase ends in its first epoch, at the step cap
