"""Run configs: validation before any training, overrides, stable keys, epoch splits."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mexit.config import RunConfig, load_config, regime_configs, split_epochs


def test_key_is_stable_and_sensitive() -> None:
    a, b = load_config("tiny"), load_config("tiny")
    assert a.key() == b.key() and len(a.key()) == 12
    assert a.with_overrides(["train.seed=1"]).key() != a.key()
    assert RunConfig.from_dict(a.to_dict()).key() == a.key()


def test_a_config_without_weights_is_the_same_model_from_no_weights() -> None:
    weighted = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "pretrained": True, "placement": [1, 2]}})
    bare = weighted.without_weights()
    assert (bare.model.pretrained, bare.model.checkpoint) == (False, None)
    assert dataclasses.replace(bare.model, pretrained=True) == weighted.model and bare.train == weighted.train and bare.data == weighted.data


def test_overrides_parse_yaml_values() -> None:
    config = load_config("tiny", ["train.epochs=[2, 3]", "train.regime=disjoint", "model.placement=[1,2]", "train.optim.lr=0.1"])
    assert config.train.phase_epochs == (2, 3)
    assert config.model.placement == [1, 2]
    assert config.train.optim.lr == 0.1


def test_earlier_spellings_of_option_values_load_as_the_names_that_say_what_they_do() -> None:
    """A stored config or an override that spells a value the earlier way (who, not what) loads
    as the current value, with the same key."""
    earlier = {"data": {"name": "cifar100", "data_root": "/data", "augment": "authors"},
               "train": {"stopping": "authors", "equilibrium": "imta"}}
    config = RunConfig.from_dict(earlier)
    assert (config.data.augment, config.train.stopping, config.train.equilibrium) == (
        "trivial-augment", "restore-on-stop", "coarsest-scale")
    now = {"data": {**earlier["data"], "augment": "trivial-augment"},
           "train": {"stopping": "restore-on-stop", "equilibrium": "coarsest-scale"}}
    assert config.key() == RunConfig.from_dict(now).key()
    ours = load_config("tiny", ["data.augment=ours", "train.stopping=ours", "train.equilibrium=ours"])
    assert (ours.data.augment, ours.train.stopping, ours.train.equilibrium) == ("crop-flip", "restore-best", "whole-output")
    assert ours.key() == load_config("tiny").key()


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("train.regime=alternating", "train.regime"),
        ("train.phases=[P1, P4]", "train.phases"),
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=-3", "train.epochs"),
        ("train.optim.lr=0", "lr"),
        ("train.optim.lr=-0.1", "lr"),
        ("train.patience=0", "train.patience"),
        ("train.optim.optimizer=lion", "train.optim"),
        ("train.loss_weights=cubic", "train.loss_weights"),
        ("train.optim.lr=.inf", "train.optim.lr must hold finite numbers"),
        ("train.optim.weight_decay=.nan", "train.optim.weight_decay must hold finite numbers"),
        ("data.noise_std=-.inf", "data.noise_std must hold finite numbers"),
        ("train.phase_optim={P2: {lr: .inf}}", "train.phase_optim must hold finite numbers"),
        ("train.channels_last=yes please", "train.channels_last must be of type bool"),
        ("train.p3_loss=final", "train.p3_loss"),
        ("train.epochs={P1: 3, P4: 2}", "train.epochs phase"),
        ("train.epochs={P1: 3, P2: 0}", "train.epochs"),
        ("train.epochs={P2: 3}", "train.epochs gives no count for phases"),
    ],
)
def test_bad_parameters_name_themselves(override: str, names: str) -> None:
    with pytest.raises(ValueError, match=names.replace(".", r"\.")):
        load_config("tiny", [override]).validate()


def test_unknown_fields_and_sections_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown train fields"):
        load_config("tiny", ["train.epoch=3"])
    with pytest.raises(ValueError, match="allowed: data, model, train"):
        RunConfig.from_dict({"optimizer": {}})
    with pytest.raises(ValueError, match="neither a file nor one of"):
        load_config("no-such-config")


def test_phase_lists_and_per_phase_optimiser() -> None:
    config = load_config("tiny", ["train.regime=disjoint", "train.phase_optim={P3: {lr: 0.5}}"])
    assert config.train.phase_list == ("P1", "P3")
    assert config.train.optim_for(0).lr == 0.05 and config.train.optim_for(1).lr == 0.5
    custom = load_config("tiny", ["train.phases=[P1, P2, P3]", "train.epochs=[1, 2, 1]"])
    custom.validate()
    assert custom.train.phase_list == ("P1", "P2", "P3")


def test_split_epochs_for_the_phase_length_ablation() -> None:
    assert split_epochs(200, [0.25, 0.75]) == [50, 150]
    assert split_epochs(200, [0.5, 0.5]) == [100, 100]
    assert sum(split_epochs(7, [1 / 3, 1 / 3, 1 / 3])) == 7
    with pytest.raises(ValueError, match="sum to 1"):
        split_epochs(10, [0.5, 0.6])


def test_regime_configs_cross_regimes_and_seeds() -> None:
    configs = regime_configs(load_config("tiny"), ["disjoint", "joint", "mixed"], [0, 1])
    assert [(c.train.regime, c.train.seed) for c in configs][:3] == [("disjoint", 0), ("joint", 0), ("mixed", 0)]
    assert len({c.key() for c in configs}) == 6
    with pytest.raises(ValueError, match="allowed: disjoint, joint, mixed"):
        regime_configs(load_config("tiny"), ["sequential"], [0])


def test_where_the_data_lives_is_not_part_of_the_key() -> None:
    base = load_config("tiny")
    moved = load_config("tiny", ["data.data_root=/elsewhere", "data.download=true"])
    other = load_config("tiny", ["data.noise_std=0.1"])
    assert moved.key() == base.key() and other.key() != base.key()


def test_world_size_must_split_every_phases_batch() -> None:
    config = load_config("tiny", ["train.optim.batch_size=6"])
    config.train.check_world_size(3)
    with pytest.raises(ValueError, match=r"batch_size 6 must be a multiple of the 4 processes"):
        config.train.check_world_size(4)
    mixup = load_config("tiny", ["train.optim.batch_size=6", "train.optim.mixup=0.8"])
    with pytest.raises(ValueError, match="2 samples per process|3 samples per process"):
        mixup.train.check_world_size(2)


def test_run_and_phase_keys_follow_the_training_code(tmp_path: Path) -> None:
    import mexit

    copy = tmp_path / "mexit"
    shutil.copytree(Path(mexit.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "from mexit.config import load_config; from mexit.store import phase_keys; "
        "c = load_config('tiny', ['train.regime=disjoint']); print(c.key(), *phase_keys(c))"
    )

    def keys() -> list[str]:
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return out.split()

    from mexit.store import phase_keys

    config = load_config("tiny", ["train.regime=disjoint"])
    assert keys() == [config.key(), *phase_keys(config)]  # the copy is the same code
    (copy / "plots.py").write_text((copy / "plots.py").read_text() + "\nNOT_TRAINING_CODE = 1\n")
    train = (copy / "train.py").read_text()
    (copy / "train.py").write_text(train.replace('"""One training loop', '"""Edited docs. One training loop') + "\n# a comment\n")
    assert keys() == [config.key(), *phase_keys(config)]  # documentation and comments are not code
    (copy / "train.py").write_text(train + "\nEDITED_TRAINING_CODE = 1\n")
    edited = keys()
    assert all(new != old for new, old in zip(edited, [config.key(), *phase_keys(config)]))


def test_the_memory_order_is_part_of_every_phase_key() -> None:
    from mexit.store import phase_keys

    on, off = (load_config("tiny", [f"train.channels_last={value}", "train.regime=disjoint"]) for value in ("true", "false"))
    assert not set(phase_keys(on)) & set(phase_keys(off))


def test_epochs_by_phase_name_hold_for_every_regime() -> None:
    """A count per phase name: P1 longer than P2 and P3, whatever the regime's phase list; the P1
    of disjoint and mixed, 30 epochs either way, is one stored phase."""
    from mexit.store import phase_keys

    by_name = "train.epochs={P1: 30, P2: 20, P3: 15}"
    disjoint, joint, mixed = (load_config("tiny", [by_name, f"train.regime={r}"]) for r in ("disjoint", "joint", "mixed"))
    for config in (disjoint, joint, mixed):
        config.validate()
    assert (disjoint.train.phase_epochs, joint.train.phase_epochs, mixed.train.phase_epochs) == ((30, 15), (20,), (30, 20))
    assert phase_keys(disjoint)[0] == phase_keys(mixed)[0]
    listed = load_config("tiny", ["train.epochs=[30, 20]", "train.regime=mixed"])
    assert phase_keys(listed) == phase_keys(mixed)
