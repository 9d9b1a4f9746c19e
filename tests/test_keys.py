"""Every stored result is keyed by what made it: run and phase keys by every setting that decides a
phase and by the code of the training path (found from its imports), analysis tables by the code
of the module that computes them; a docstring edit keys nothing anew."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mexit.config import TRAINING_ROOTS, OptimConfig, TrainConfig, load_config, regime_configs
from mexit.fingerprint import closure
from mexit.store import PHASE_KEY_EXEMPT, phase_keys

CHANGED: dict[str, Any] = {
    "phases": ["P2"],
    "epochs": 3,
    "optim": OptimConfig(lr=0.01),
    "phase_optim": {"P2": {"lr": 0.01}},
    "loss_weights": "linear",
    "p3_loss": "all_heads",
    "gradient_equilibrium": True,
    "equilibrium": "coarsest-scale",
    "patience": 3,
    "stopping": "restore-on-stop",
    "eval_every": 7,
    "eval_batch_size": 64,
    "num_workers": 1,
    "dominance_every": 7,
    "channels_last": False,
    "max_steps": 5,
    "eval_batches": 2,
    "seed": 9,
}
"""A changed value of every train setting that is part of the phase keys."""


def _keys(train: TrainConfig) -> set[str]:
    """The phase keys of every regime of the tiny config with these train settings."""
    base = load_config("tiny")
    config = dataclasses.replace(base, train=train)
    keys: set[str] = set()
    for regime_config in regime_configs(config, ["disjoint", "joint", "mixed"], [train.seed]):
        if train.phases is not None:
            regime_config = dataclasses.replace(regime_config, train=dataclasses.replace(regime_config.train, phases=train.phases))
        keys |= set(phase_keys(regime_config))
    return keys


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainConfig)])
def test_every_train_setting_changes_a_phase_key_or_says_why_it_cannot(field: str) -> None:
    base = load_config("tiny").train
    if field in PHASE_KEY_EXEMPT:
        assert field not in CHANGED and PHASE_KEY_EXEMPT[field]  # a reason, in words
        return
    changed = dataclasses.replace(base, **{field: CHANGED[field]})
    assert _keys(changed) != _keys(base), f"train.{field} decides a phase but no phase key holds it"


def test_the_evaluation_batch_size_keys_the_p1_that_early_stopping_reads_it_in() -> None:
    small, large = (load_config("tiny", ["train.regime=mixed", "train.eval_batches=2", f"train.eval_batch_size={size}"]) for size in (8, 16))
    assert phase_keys(small)[0] != phase_keys(large)[0]


def test_the_training_path_is_found_from_its_imports() -> None:
    training = closure(TRAINING_ROOTS)
    for module in ("mexit.train", "mexit.evaluate.inference", "mexit.store", "mexit.pipeline", "mexit.models.heads", "mexit.fingerprint"):
        assert module in training
    for module in ("mexit.claims", "mexit.plots", "mexit.book", "mexit.evaluate.corruptions"):
        assert module not in training


def _copy_package(tmp_path: Path) -> Path:
    import mexit

    copy = tmp_path / "mexit"
    shutil.copytree(Path(mexit.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _keys_in(tmp_path: Path) -> tuple[str, str]:
    """The tiny config's run key and the distribution-shift table's key for fixed inputs, computed by the copy in ``tmp_path``."""
    script = (
        "from mexit.config import load_config; from mexit.store import table_key; "
        "print(load_config('tiny').key(), table_key('distribution_shift', {'runs': ['x']}, 'mexit.analysis.robustness'))"
    )
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    run_key, table = out.split()
    return run_key, table


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_a_behaviour_change_in_the_training_path_keys_new_runs_and_a_docstring_does_not(tmp_path: Path) -> None:
    copy = _copy_package(tmp_path)
    before = _keys_in(tmp_path)
    _edit(copy / "evaluate" / "inference.py", '"""', '"""Edited documentation. ')
    assert _keys_in(tmp_path) == before
    inference = copy / "evaluate" / "inference.py"
    inference.write_text(inference.read_text() + '\nLIMIT = 3\n"""A name\'s docstring: documentation too."""\n')
    with_name = _keys_in(tmp_path)
    assert with_name[0] != before[0]  # a new name is code
    _edit(inference, "documentation too.", "documentation too, edited.")
    assert _keys_in(tmp_path) == with_name  # its docstring is not
    _edit(copy / "evaluate" / "inference.py", "* 100", "* 50")  # validation accuracy, which early stopping reads
    edited = _keys_in(tmp_path)
    assert edited[0] != before[0]


def test_a_change_in_the_corruption_code_keys_the_shift_table_anew_and_no_run(tmp_path: Path) -> None:
    copy = _copy_package(tmp_path)
    before = _keys_in(tmp_path)
    _edit(copy / "evaluate" / "corruptions.py", "\ndef ", "\nSEVERITY_SCALE = 2.0\n\n\ndef ")
    run_key, table = _keys_in(tmp_path)
    assert run_key == before[0] and table != before[1]


def test_results_made_by_other_code_are_reported_stale(tmp_path: Path) -> None:
    import pandas as pd

    from mexit import checkpoint
    from mexit.pipeline import train_or_load
    from mexit.stale import stale_runs, stale_tables
    from mexit.store import RunStore

    store = RunStore(tmp_path)
    run = train_or_load(store, load_config("tiny", ["train.regime=joint"]))
    store.cached_table("rank", {"runs": [run.key]}, lambda: pd.DataFrame({"a": [1]}), code="mexit.analysis.rank")
    assert stale_runs(store)["current"].all() and stale_tables(store)["current"].all()
    record = next((tmp_path / "analyses" / "rank").glob("*.json"))
    checkpoint.write_json(record, {"code": "mexit.analysis.rank", "fingerprint": "000000000000"})  # as older code left it
    config = checkpoint.read_json(run.path / "config.json")
    config["train"]["seed"] = 7  # a config today's code keys elsewhere
    checkpoint.write_json(run.path / "config.json", config)
    assert stale_runs(store)["current"].tolist() == [False] and stale_tables(store)["current"].tolist() == [False]
    config["model"]["backbone"] = "py/a_module_of_someone_else:net"  # a shared store's run of a network not found here
    checkpoint.write_json(run.path / "config.json", config)
    assert stale_runs(store)["today"].tolist() == ["unknown (its backbone's module is not found here)"]
    from mexit.cli import main

    assert main(["runs", "check", "--root", str(tmp_path)]) == 0


def test_the_code_text_is_the_same_on_every_python_that_parses_it_alike() -> None:
    """ast.dump prints fields newer Pythons add (3.12's type_params=[]) by version: the code text
    leaves out every empty field, so a store trained on one Python is found on another."""
    from mexit.fingerprint import code_only

    source = 'def f(x):\n    """Doc."""\n    return x  # a comment\n'
    assert code_only(source) == (
        "Module(body=[FunctionDef(name='f', args=arguments(args=[arg(arg='x')]), "
        "body=[Return(value=Name(id='x', ctx=Load()))])])"
    )
    assert code_only("if a:\n    'only a string'\nelse:\n    b = 1\n") == code_only("if a:\n    pass\nelse:\n    b = 1\n")


def test_a_run_trained_under_another_torch_or_timm_keys_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """The libraries' code builds and trains the model as mexit's does (layers, initialisations,
    timm's architectures): a run and its phases under another version are other results."""
    import mexit.config

    config = regime_configs(load_config("tiny"), ["mixed"], [0])[0]
    run, phases = config.key(), phase_keys(config)
    installed = mexit.config.library_versions()
    assert set(installed) == {"torch", "torchvision", "timm"} and installed["torch"].split("+")[0] == "2.14.1"  # the lock's
    for library in installed:
        monkeypatch.setattr(mexit.config, "library_versions", lambda: {**installed, library: "0.0.1"})
        assert config.key() != run and all(a != b for a, b in zip(phase_keys(config), phases, strict=True))
    monkeypatch.setattr(mexit.config, "library_versions", lambda: dict(installed))
    assert config.key() == run
