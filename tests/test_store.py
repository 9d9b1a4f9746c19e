"""Training through the run store: load instead of retrain, sharing, resume, locking, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from mexit.pipeline import train_or_load, trained_model
from mexit import checkpoint, data
from mexit.checkpoint import CorruptCheckpointError
from mexit.config import RunConfig, load_config, regime_configs
from mexit.train import Probe
from mexit.store import RunStore, phase_keys


def _mexit(*args: str, root: Path) -> list[str]:
    return [sys.executable, "-m", "mexit", "--root", str(root), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _cli(capsys: pytest.CaptureFixture[str], *args: str, root: Path) -> tuple[int, str, str]:
    """``mexit --root ROOT ARGS`` in this process (no torch import per call): exit code, stdout, stderr.
    The process boundary matters only where a test kills or races processes; those use ``_mexit``."""
    from mexit.cli import main

    capsys.readouterr()
    try:
        code = main(["--root", str(root), *args])
    except SystemExit as stop:  # argparse's own refusals
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_three_regimes_share_p1_and_load_instantly(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    configs = regime_configs(load_config("tiny"), ["disjoint", "joint", "mixed"], [0])
    runs = [train_or_load(store, c) for c in configs]
    assert len(list((tmp_path / "phases").iterdir())) == 4  # P1 (shared), P3, P2 of joint, P2 of mixed
    assert phase_keys(configs[0])[0] == phase_keys(configs[2])[0]
    for run in runs:
        assert run.logits("test").ndim == 3
        assert len(run.metrics["test_acc"]) == run.logits("test").shape[0]
        assert run.costs["unit"] == "MACs" and run.costs["macs"] == sorted(run.costs["macs"])
        assert set(run.trace()["phase"]) == set(run.config.train.phase_list)
    started = time.perf_counter()
    again = train_or_load(store, configs[2])
    assert time.perf_counter() - started < 1.0
    assert torch.equal(again.logits("test"), runs[2].logits("test"))
    table = store.table().set_index("key")
    assert len(table) == 3
    for run in runs:
        row = table.loc[run.key]
        assert row["phases"] == "+".join(run.config.train.phase_list) and row["seed"] == 0
        assert row["final_acc"] == round(run.metrics["test_acc"][-1], 2)
        assert row["best_exit_acc"] == round(max(run.metrics["test_acc"]), 2)
        assert row["train_s"] == round(sum(run.metrics["phase_wall_time_s"]), 1)


def test_the_default_store_is_mexit_runs_or_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mexit.store import default_root

    monkeypatch.setenv("MEXIT_RUNS", str(tmp_path / "shared"))
    assert default_root() == tmp_path / "shared" and RunStore().root == tmp_path / "shared"
    monkeypatch.delenv("MEXIT_RUNS")
    assert default_root() == Path("runs")


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    checkpoint.write_bytes_atomic(target, b"old")

    def failing_replace(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_p3_of_a_disjoint_run_leaves_the_p1_backbone_untouched(tmp_path: Path) -> None:
    """Real training, not only apply_phase: after P3 every backbone tensor, BatchNorm buffers
    included, equals its state after P1, while the ICs have changed."""
    config = regime_configs(load_config("tiny", ["train.epochs=2"]), ["disjoint"], [0])[0]
    run = train_or_load(RunStore(tmp_path), config)
    after_p1, after_p3 = (checkpoint.load_tensors(tmp_path / "phases" / key / "state.pt")["model"] for key in phase_keys(config))
    backbone = list(after_p1)  # P1 keeps the backbone's state only
    assert any("running_mean" in k for k in backbone) and any(k.startswith("final_head.") for k in backbone)
    assert not any(k.startswith("ics.") for k in backbone)
    for key in backbone:
        assert torch.equal(after_p1[key], after_p3[key]), key
    initial = _initial_model(config).state_dict()
    assert any(not torch.equal(initial[k], after_p3[k]) for k in after_p3 if k.startswith("ics."))
    assert run.metrics["phases"] == ["P1", "P3"]


def _initial_model(config: RunConfig) -> torch.nn.Module:
    from mexit.models import build_model
    from mexit.train import seed_everything

    splits = data.load(config.data)
    seed_everything(config.train.seed)
    return build_model(config, splits.input_shape, splits.num_classes)


def test_p3_over_all_heads_weighs_each_ic_one_in_h(tmp_path: Path) -> None:
    # The authors' P3 loss also averages the frozen final head's constant term: under uniform
    # weights each of the 2 ICs of 3 heads weighs 1/3 instead of 1/2, i.e. our P3 at 2/3 the rate.
    base = ["train.regime=disjoint", "train.optim.weight_decay=0", "train.optim.lr=0.03", "train.dominance_every=0"]
    store = RunStore(tmp_path)
    authors = train_or_load(store, load_config("tiny", [*base, "train.p3_loss=all_heads"]))
    ours = train_or_load(store, load_config("tiny", [*base, "train.phase_optim={P3: {lr: 0.02}}"]))
    assert authors.key != ours.key and phase_keys(authors.config)[0] == phase_keys(ours.config)[0]  # one P1
    a, b = trained_model(authors).state_dict(), trained_model(ours).state_dict()
    ics = [name for name in a if name.startswith("ics.") and a[name].is_floating_point()]
    assert ics and all(torch.allclose(a[name], b[name], atol=1e-5) for name in ics)
    moved = load_config("tiny", [*base, "train.phase_optim={P3: {lr: 0.03}}"])  # the same rate: the ICs differ
    c = trained_model(train_or_load(store, moved)).state_dict()
    assert not all(torch.allclose(a[name], c[name], atol=1e-5) for name in ics)


def test_one_p1_per_seed_serves_every_ic_configuration(tmp_path: Path) -> None:
    """Two configs that differ only in their ICs (placement, head, method) share one stored P1,
    and a P1 trained apart for either gives bit-identical backbone weights."""
    base = load_config("tiny", ["train.epochs=2"])
    other = load_config("tiny", ["train.epochs=2", "model.placement=[2, 5, 8]", "model.head=conv",
                                 "model.head_kwargs={num_layers: 2}", "model.method=ztw"])
    disjoint = regime_configs(base, ["disjoint"], [0])[0]
    mixed = regime_configs(other, ["mixed"], [0])[0]
    assert phase_keys(disjoint)[0] == phase_keys(mixed)[0]
    assert phase_keys(regime_configs(base, ["mixed"], [1])[0])[0] != phase_keys(disjoint)[0]  # one per seed
    store = RunStore(tmp_path / "shared")
    first, second = train_or_load(store, disjoint), train_or_load(store, mixed)
    assert first.phases()["phase_key"][0] == second.phases()["phase_key"][0]
    assert len(list((tmp_path / "shared" / "phases").iterdir())) == 3  # P1 once, P3, P2
    apart = train_or_load(RunStore(tmp_path / "apart"), mixed)
    shared_p1, own_p1 = (checkpoint.load_tensors(run.path.parent.parent / "phases" / run.phases()["phase_key"][0] / "state.pt")["model"]
                         for run in (second, apart))
    assert shared_p1.keys() == own_p1.keys() and all(torch.equal(shared_p1[k], own_p1[k]) for k in own_p1)
    assert torch.equal(second.logits("test"), apart.logits("test"))
    initial = (_initial_model(c).state_dict() for c in (disjoint, mixed))
    a, b = initial
    assert all(torch.equal(a[k], b[k]) for k in shared_p1)  # the backbone starts alike whatever the ICs
    trace = second.trace()
    assert f"val_acc_{len(second.metrics['test_acc']) - 1}" in trace and not any(c.endswith("_final") for c in trace)


def test_same_config_and_seed_give_identical_logits(tmp_path: Path) -> None:
    config = load_config("tiny", ["train.regime=joint"])
    first = train_or_load(RunStore(tmp_path / "a"), config)
    second = train_or_load(RunStore(tmp_path / "b"), config)
    assert torch.equal(first.logits("val"), second.logits("val"))
    assert torch.equal(first.logits("test"), second.logits("test"))


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_model_takes_the_configured_memory_order(channels_last: bool) -> None:
    from mexit.models import build_model

    config = load_config("tiny", [f"train.channels_last={str(channels_last).lower()}"])
    model = build_model(config, (1, 8, 8), 10)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert convs and all(w.is_contiguous(memory_format=layout) for w in convs)
    maps = model.forward_blocks(torch.randn(2, 1, 8, 8))
    assert maps[0].is_contiguous(memory_format=torch.channels_last) == channels_last


def test_model_reloads_with_the_stored_weights(tmp_path: Path) -> None:
    run = train_or_load(RunStore(tmp_path), load_config("tiny"))
    model = trained_model(run)
    from mexit.data import load

    splits = load(run.config.data)
    images = torch.stack([splits.test[i][0] for i in range(8)])
    with torch.no_grad():
        logits = torch.stack(model(images))
    stored = checkpoint.load_tensors(run.path / "logits.pt")
    assert stored["test"].dtype == stored["val"].dtype == torch.float16  # 2 bytes a value
    assert run.logits("test").dtype == torch.float32
    assert torch.allclose(logits, run.logits("test")[:, :8], rtol=1e-3, atol=1e-3)  # float16's 11 bits


def test_corrupted_checkpoint_is_detected_not_used(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run = train_or_load(store, load_config("tiny"))
    state = tmp_path / "phases" / phase_keys(run.config)[-1] / "state.pt"
    blob = bytearray(state.read_bytes())
    blob[-100] ^= 0xFF
    state.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="corrupted"):
        trained_model(run)
    state.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CorruptCheckpointError, match="corrupted"):
        trained_model(run)


def test_stored_files_follow_the_umask_so_a_shared_store_is_readable(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        checkpoint.write_json(tmp_path / "a.json", {"x": 1})
        checkpoint.save_tensors(tmp_path / "b.pt", {"w": torch.ones(1)})
        os.umask(0o002)
        checkpoint.write_json(tmp_path / "c.json", {"x": 1})
    finally:
        os.umask(previous)
    assert [(tmp_path / name).stat().st_mode & 0o777 for name in ("a.json", "b.pt", "c.json")] == [0o644, 0o644, 0o664]


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "code ran"))


def test_a_crafted_file_with_a_valid_header_is_refused_without_running_code(tmp_path: Path) -> None:
    import hashlib
    import io
    import pickle

    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buffer, pickle_module=pickle)
    payload = buffer.getvalue()
    crafted = tmp_path / "state.pt"
    crafted.write_bytes(f"mexit-ckpt-v1 {len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode() + payload)
    with pytest.raises(CorruptCheckpointError, match="more than tensors"):
        checkpoint.load_tensors(crafted)
    assert not marker.exists()
    assert checkpoint.load_or_quarantine(crafted) is None and (tmp_path / "state.pt.corrupt").exists()
    assert not marker.exists()
    checkpoint.save_tensors(tmp_path / "plain.pt", {"model": {"w": torch.ones(2)}, "progress": {"epoch": 3, "trace": [{"a": 1.0}]}})
    assert checkpoint.load_tensors(tmp_path / "plain.pt")["progress"]["epoch"] == 3


def test_early_stopping_follows_the_papers_rule_and_reloads_the_best_state(tmp_path: Path) -> None:
    patience = 2
    config = load_config("tiny", ["train.regime=joint", "train.epochs=30", f"train.patience={patience}", "train.eval_every=2", "train.optim.lr=0.002"])
    run = train_or_load(RunStore(tmp_path), config)
    trace = run.trace()
    accuracy = trace[[f"val_acc_{i}" for i in range(3)]].to_numpy()
    best, bad, last_improvement, stop = [-1.0] * 3, [0] * 3, None, None
    for row, values in enumerate(accuracy):  # replay the rule on the recorded evaluations
        improved = [v > b for v, b in zip(values, best)]
        best = [max(v, b) for v, b in zip(values, best)]
        bad = [0 if imp else n + 1 for imp, n in zip(improved, bad)]
        last_improvement = row if any(improved) else last_improvement
        if all(n >= patience for n in bad):
            stop = row
            break
    assert stop == len(trace) - 1, "training did not stop at the first evaluation where every head had stalled"
    assert run.metrics["phase_stopped_early"] == [True] and run.metrics["phase_epochs_run"][0] < 30
    assert run.metrics["val_acc"] == pytest.approx(list(accuracy[last_improvement]), abs=1e-4)


def test_remove_keeps_phases_other_runs_use(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    disjoint, mixed = (train_or_load(store, c) for c in regime_configs(load_config("tiny"), ["disjoint", "mixed"], [0]))
    removed = store.remove(mixed.key)
    assert tmp_path / "phases" / phase_keys(mixed.config)[0] not in removed  # P1 is disjoint's too
    assert len(removed) == 2
    assert [r.key for r in store.runs()] == [disjoint.key]
    with pytest.raises(KeyError, match="no run"):
        store.find(mixed.key)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    # Mixed, with early stopping and evaluations that do not divide an epoch, killed during P2.
    # Six P2 epochs leave seconds between the first resume point and the end: time enough to kill.
    overrides = ["train.regime=mixed", "train.epochs=[1, 6]", "train.patience=100", "train.eval_every=7"]
    config = load_config("tiny", overrides)
    killed_root = tmp_path / "killed"
    partial = killed_root / "phases" / phase_keys(config)[1] / "partial.pt"
    process = subprocess.Popen(_mexit("train", "--config", "tiny", *overrides, root=killed_root), env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not partial.exists():
        time.sleep(0.02)
    assert partial.exists() and process.poll() is None, "the run finished before it could be interrupted"
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = checkpoint.load_tensors(partial)["state"]
    assert 0 < state["epoch"] < 6
    resumed_process = subprocess.run(_mexit("train", "--config", "tiny", *overrides, root=killed_root), env=_env(), capture_output=True, text=True)
    assert resumed_process.returncode == 0
    assert f"P2] resuming after epoch {state['epoch']} of 6" in resumed_process.stderr
    resumed = train_or_load(RunStore(killed_root), config)
    fresh = train_or_load(RunStore(tmp_path / "fresh"), config)
    assert torch.equal(resumed.logits("test"), fresh.logits("test"))
    assert resumed.trace().equals(fresh.trace())
    assert not partial.exists()


def test_a_corrupted_phase_is_reported_set_aside_and_recomputed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    disjoint_config, mixed_config = regime_configs(load_config("tiny"), ["disjoint", "mixed"], [0])
    train_or_load(store, disjoint_config)
    shared = tmp_path / "phases" / phase_keys(mixed_config)[0] / "state.pt"
    blob = bytearray(shared.read_bytes())
    blob[-10] ^= 0xFF
    shared.write_bytes(bytes(blob))
    mixed = train_or_load(store, mixed_config)  # needs the shared P1: finds it damaged, retrains it
    assert "corrupted" in capsys.readouterr().err
    assert shared.with_name("state.pt.corrupt").exists()
    assert torch.equal(mixed.logits("test"), train_or_load(RunStore(tmp_path / "fresh"), mixed_config).logits("test"))


def test_an_unfinished_run_can_be_removed(tmp_path: Path) -> None:
    config = load_config("tiny", ["train.regime=joint", "train.epochs=40"])
    process = subprocess.Popen(_mexit("train", "--config", "tiny", "train.regime=joint", "train.epochs=40", root=tmp_path), env=_env(), stderr=subprocess.DEVNULL)
    partial = tmp_path / "phases" / phase_keys(config)[0] / "partial.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not partial.exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    removed = RunStore(tmp_path).remove(config.key())
    assert tmp_path / "runs" / config.key() in removed and not partial.exists()


def test_two_processes_asking_for_one_run_train_it_once(tmp_path: Path) -> None:
    command = _mexit("train", "--config", "tiny", "train.regime=joint", "train.epochs=3", root=tmp_path)
    processes = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    epoch_lines = [line for _, err in outputs for line in err.splitlines() if "epoch 1/3" in line]
    assert len(epoch_lines) == 1, "the run was trained twice"
    assert outputs[0][0].split()[0] == outputs[1][0].split()[0]  # the same run key


def test_a_process_waiting_for_a_lock_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from filelock import FileLock

    (tmp_path / "phases" / "k").mkdir(parents=True)
    taken = threading.Event()

    def hold() -> None:  # another holder (filelock refuses a second instance in one thread)
        with FileLock(str(tmp_path / "phases" / "k" / ".lock")):
            taken.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    with RunStore(tmp_path).lock(tmp_path / "phases" / "k", True):
        pass
    holder.join()
    assert "another process is training" in capsys.readouterr().err
    with RunStore(tmp_path).lock(tmp_path / "phases" / "k", True):  # free: no message
        pass
    assert capsys.readouterr().err == ""


def test_progress_is_one_line_per_epoch_outside_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "train", "--config", "tiny", "train.regime=mixed", "train.epochs=2", root=tmp_path)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "epoch" in line]
    assert len(lines) == 4 and "val_acc%" in lines[0]
    assert "\r" not in err


def test_cli_lists_shows_and_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "train", "--config", "tiny", root=tmp_path)
    assert code == 0, err
    key = out.split()[0]
    assert key in _cli(capsys, "runs", "list", root=tmp_path)[1]
    code, out, _ = _cli(capsys, "runs", "show", key[:6], root=tmp_path)
    assert code == 0 and '"test_acc"' in out
    # Listing and showing need no torch: a fresh process answers without importing it.
    script = (
        "import sys; from mexit.cli import main; "
        f"assert main(['runs', 'list', '--root', {str(tmp_path)!r}]) == 0; "
        f"assert main(['runs', 'show', {key!r}, '--root', {str(tmp_path)!r}]) == 0; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    listed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert listed.returncode == 0 and key in listed.stdout, listed.stderr
    assert _cli(capsys, "runs", "remove", key, root=tmp_path)[0] == 0
    assert "no runs" in _cli(capsys, "runs", "list", root=tmp_path)[1]


def test_a_damaged_or_unfinished_run_is_listed_with_its_state_and_a_damaged_one_retrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RunStore(tmp_path)
    disjoint, mixed = (train_or_load(store, c) for c in regime_configs(load_config("tiny"), ["disjoint", "mixed"], [0]))
    phase_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "phases").glob("*/state.pt")}
    metrics, logits = (mixed.path / "metrics.json").read_text(), mixed.logits("test").clone()
    (mixed.path / "metrics.json").write_text(metrics[: len(metrics) // 2])  # truncated
    (disjoint.path / "metrics.json").unlink()  # as if training had stopped before its end
    code, out, err = _cli(capsys, "runs", "list", root=tmp_path)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "damaged: metrics.json (does not parse" in lines[mixed.key] and "unfinished" in lines[disjoint.key]
    code, out, _ = _cli(capsys, "runs", "show", disjoint.key, root=tmp_path)
    assert code == 1 and "is unfinished" in out
    assert store.runs() == []
    again = train_or_load(store, mixed.config)  # set aside, trained again from its intact phases
    assert "damaged: metrics.json" in capsys.readouterr().err
    assert (tmp_path / "runs" / f"{mixed.key}.damaged").is_dir()
    assert torch.equal(again.logits("test"), logits) and again.metrics["test_acc"] == json.loads(metrics)["value"]["test_acc"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "phases").glob("*/state.pt")} == phase_files  # no phase retrained
    blob = bytearray((again.path / "logits.pt").read_bytes())
    blob[-10] ^= 0xFF
    (again.path / "logits.pt").write_bytes(bytes(blob))
    train_or_load(store, mixed.config)
    assert "damaged: logits.pt" in capsys.readouterr().err
    assert [r.key for r in store.runs()] == [mixed.key]  # the set-aside copy is not a run


def test_a_changed_digit_in_a_json_file_is_noticed_and_recomputed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(tmp_path)
    run = train_or_load(store, load_config("tiny"))
    costs = (run.path / "costs.json").read_text()
    first = next(i for i, c in enumerate(costs) if c.isdigit() and costs[i - 1] in " [")
    (run.path / "costs.json").write_text(costs[:first] + str((int(costs[first]) + 1) % 10) + costs[first + 1:])
    with pytest.raises(CorruptCheckpointError, match="costs.json: its content no longer matches its sha256"):
        run.costs
    assert "damaged: costs.json (its content no longer matches its sha256)" in store.table().set_index("key").loc[run.key, "state"]
    again = train_or_load(store, run.config)
    assert "damaged: costs.json" in capsys.readouterr().err and again.costs["macs"] == json.loads(costs)["value"]["macs"]
    phase = tmp_path / "phases" / phase_keys(run.config)[0] / "phase.json"
    phase.write_text(phase.read_text().replace('"epochs_run": 1', '"epochs_run": 7'))
    shutil.rmtree(again.path)
    train_or_load(store, run.config)  # the phase record no longer matches: that phase is trained again
    assert "phase.json.corrupt" in capsys.readouterr().err and checkpoint.read_json(phase)["epochs_run"] == 1


def test_cli_refuses_bad_parameters_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "train", "--config", "tiny", "train.optim.lr=0", root=tmp_path)
    assert code == 2 and "lr must be > 0" in err
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.pt"))


def _free_port() -> int:
    """A port no process listens on now (the OS's choice): two test runs at once, or a service on a
    fixed port, cannot collide with the ranks' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _torchrun(root: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "mexit", "--root", str(root), "train", "--config", "tiny", "--device", "cpu", *overrides,
    ]  # fmt: skip
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)


def test_distributed_ranks_agree_on_early_stopping(tmp_path: Path) -> None:
    overrides = ["train.regime=mixed", "train.epochs=[1, 30]", "train.patience=1", "train.eval_every=2"]
    result = _torchrun(tmp_path, overrides)  # a rank that stopped alone would hang the other
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunStore(tmp_path).runs()[0]
    assert run.metrics["phase_stopped_early"][1] and run.metrics["world_size"] == 2


def test_distributed_run_matches_single_process(tmp_path: Path) -> None:
    overrides = ["train.regime=joint", "train.epochs=2", "train.optim.lr=0.001"]
    single = train_or_load(RunStore(tmp_path / "single"), load_config("tiny", overrides))
    result = _torchrun(tmp_path / "ddp", overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = RunStore(tmp_path / "ddp").runs()
    assert len(ddp) == 1 and ddp[0].metrics["world_size"] == 2
    # Same global batches and gradient average, but BatchNorm sees half-batches per rank and each
    # rank draws its own augmentation: close, not equal (measured ~14% of the logit scale). The
    # exact comparison, without either, is the next test.
    diff = (ddp[0].logits("test") - single.logits("test")).abs().max()
    scale = single.logits("test").abs().max()
    assert diff < 0.25 * scale, f"max |diff| {diff:.4f} vs logit scale {scale:.4f}"
    assert ddp[0].metrics["test_acc"] == pytest.approx(single.metrics["test_acc"], abs=5)


def test_distributed_run_equals_single_process_without_batch_statistics_or_augmentation(tmp_path: Path) -> None:
    # A ViT (LayerNorm: nothing depends on the batch), no augmentation draws, and global batches
    # that split evenly over two ranks: DDP's averaged gradients equal the single process's, so the
    # runs differ only by the order of floating-point sums (within 1e-4 of the logit scale before the
    # float16 storage, whose rounding can then differ by one step).
    overrides = [
        "train.regime=joint", "train.epochs=2", "train.optim.lr=0.001", "train.optim.optimizer=adamw",
        "model.backbone=timm/vit_tiny_patch16_224", "model.backbone_kwargs={patch_size: 4}", "model.head=linear",
        "model.placement=[4, 8]", "data.augment=none", "data.train_size=512", "train.dominance_every=0",
    ]  # fmt: skip
    single = train_or_load(RunStore(tmp_path / "single"), load_config("tiny", overrides))
    result = _torchrun(tmp_path / "ddp", overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = RunStore(tmp_path / "ddp").runs()[0]
    assert ddp.metrics["world_size"] == 2
    # equal up to the order of floating-point sums, then float16 storage's rounding (one step of it)
    assert torch.allclose(ddp.logits("test"), single.logits("test"), rtol=2**-10, atol=2**-10)
    assert ddp.metrics["test_acc"] == pytest.approx(single.metrics["test_acc"], abs=0.3)  # a sample at most
    # each rank validates its shard and the counts are summed: the whole split's accuracy, not a shard's
    columns = [c for c in single.trace().columns if c.startswith("val_acc_")]
    assert np.allclose(ddp.trace()[columns].to_numpy(), single.trace()[columns].to_numpy(), atol=0.75)  # a sample at most


def test_gradient_dominance_is_traced_during_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mexit.pipeline

    real_probe = mexit.pipeline.dominance_probe

    def slow_probe(config: RunConfig, splits: data.Splits) -> Probe:
        probe = real_probe(config, splits)

        def measured(model: torch.nn.Module, step: int, weights: torch.Tensor) -> list[dict[str, Any]]:
            time.sleep(2.0)  # a measurement, not training: left out of the phase's wall time
            return probe(model, step, weights)

        return measured

    monkeypatch.setattr(mexit.pipeline, "dominance_probe", slow_probe)
    plain = train_or_load(RunStore(tmp_path), load_config("tiny", ["train.regime=mixed", "train.dominance_every=0"]))
    traced = train_or_load(RunStore(tmp_path), load_config("tiny", ["train.regime=mixed", "train.dominance_every=5"]))
    assert plain.probes().empty
    probes = traced.probes()
    # P2 only (exits compete there), before its first step and every 5 steps
    assert set(probes["phase"]) == {"P2"} and set(probes["step"]) == {0, 5, 10}
    shares = probes.groupby(["phase", "step", "block"])["share"].sum()
    assert (shares - 1).abs().max() < 1e-5
    assert torch.equal(plain.logits("test"), traced.logits("test")), "the probe changed training"
    p2 = traced.phases().set_index("phase").loc["P2"]
    assert p2["wall_time_s"] < 3.0, f"3 probes of 2 s each were counted as training time: {p2['wall_time_s']:.1f} s"
    # step 0 is the state P2 starts from: mixed's P1 model, the final head's loss only in P1
    p1_model = _initial_model(traced.config)  # the ICs as built, the backbone after P1
    p1_model.load_phase_state(checkpoint.load_tensors(traced._phase_dirs[0] / "state.pt")["model"])
    splits = data.load(traced.config.data)
    from mexit.dominance import training_probe

    weights = torch.full((p1_model.num_exits,), 1.0 / p1_model.num_exits)
    expected = pd.DataFrame(training_probe(splits.train_eval, seed=traced.config.train.seed)(p1_model, 0, weights))
    start = probes[probes["step"] == 0].reset_index(drop=True)
    assert np.allclose(start["share"], expected["share"], atol=1e-6)


def test_a_dry_run_shows_each_phase_and_trains_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "train", "--config", "resnet50-tinyimagenet", "--regimes", "disjoint", "--dry-run", root=tmp_path)
    assert code == 0, err
    assert "7 exits (ICs after blocks [5, 7, 9, 11, 13, 15])" in out and "p3_loss: all_heads" in out
    blocks = out.split("phase P3 ")
    p1, p3 = ({line.split()[0]: line.split(None, 1)[1] for line in block.splitlines() if line.startswith("  ")}
              for block in (blocks[0].split("phase P1 ")[1], blocks[1]))
    assert p1["trains"] == "backbone" and p1["lr"] == "0.2" and p1["momentum"] == "0.0" and p1["loss_weights"] == "uniform: 1"
    # the authors' P3: lr 0.02, and the mean over all 7 heads (the frozen final head's term included)
    assert p3["trains"] == "ICs" and p3["lr"] == "0.02" and p3["loss_exits"] == "1 2 3 4 5 6 H" and p3["loss_weights"].count("0.143") == 7
    # the authors' early stopping: P1 evaluated every epoch, P3 every min(batches, 300) steps
    assert p1["stopping"].startswith("validation every epoch, patience 50 (restore-on-stop: ties do not count")
    assert p3["stopping"].startswith("validation every min(batches per epoch, 300) steps, patience 50 (restore-on-stop")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "phases").exists()


def test_cli_takes_overrides_after_regimes_and_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "train", "--config", "tiny", "--regimes", "joint", "--seeds", "0", "1", "train.epochs=2", root=tmp_path)
    assert code == 0, err
    runs = RunStore(tmp_path).runs()
    assert sorted(r.config.train.seed for r in runs) == [0, 1]
    assert {r.config.train.phase_epochs for r in runs} == {(2,)}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["model.placement=[1,50]"], "placement"),
        (["data.name=cifar10", "data.data_root=/nonexistent/dir"], "/nonexistent/dir"),
        (["--device", "tpu0"], "--device"),
        (["train.epochs=abc"], "train.epochs"),
        (["--regimes", "sequential"], "allowed: disjoint, joint, mixed"),
        (["--seeds", "-1"], "--seeds takes non-negative integers, got '-1'"),
    ],
)
def test_cli_errors_store_nothing(tmp_path: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "train", "--config", "tiny", *arguments, root=tmp_path)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """``mexit runs list | head -0``: the output pipe closes before mexit writes; it stops quietly."""
    train_or_load(RunStore(tmp_path), load_config("tiny", ["train.regime=joint", "train.dominance_every=0"]))
    process = subprocess.Popen(_mexit("runs", "list", root=tmp_path), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the interpreter has even imported mexit
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
