"""Tests of mexit.sweep: the plan is what the book trains, jobs through submitit's local executor
(real subprocesses, one thread each), a killed job resumed on resubmission, SLURM shown by a dry run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mexit import sweep
from mexit.plan import declared_parameters, load_profile, needed_runs, notebook_names
from mexit.store import file_lock, phase_keys

ROOT = Path(__file__).resolve().parent.parent


def test_the_plan_is_what_the_book_trains_grouped_by_shared_phases(tmp_path: Path) -> None:
    runs = sweep.plan("tiny", ROOT, tmp_path)
    needed = needed_runs(load_profile("tiny"), declared_parameters(ROOT, notebook_names(ROOT)), tmp_path)
    assert [run.key for run in runs] == list(needed)
    groups = sweep.groups(runs)
    assert sorted(run.key for group in groups for run in group) == sorted(needed)
    owner = {key: index for index, group in enumerate(groups) for run in group for key in run.phase_keys}
    for index, group in enumerate(groups):  # no phase is trained by two groups
        assert all(owner[key] == index for run in group for key in run.phase_keys)
    disjoint = next(run for run in runs if run.config.train.regime == "disjoint")
    mixed = next(run for run in runs if run.config.train.regime == "mixed" and run.phase_keys[0] == disjoint.phase_keys[0])
    assert any(disjoint in group and mixed in group for group in groups)
    table = sweep.plan_table(runs, tmp_path)
    assert list(table.columns) == ["key", "row", "regime", "seed", "phases", "shared", "stored", "train_macs"]
    assert not table["stored"].any() and (table["train_macs"] > 0).all()
    assert table.loc[table["key"] == disjoint.key, "shared"].item().startswith("P1")
    # each phase counted once: below the runs' sum by exactly the shared phases' repeats
    per_phase = {key: macs for run in runs for key, macs in zip(run.phase_keys, sweep.phase_macs(run.config))}
    assert sweep.total_train_macs(runs) == pytest.approx(sum(per_phase.values()))
    assert sweep.total_train_macs(runs) < table["train_macs"].sum()


def test_the_plan_holds_table1s_fresh_seeds() -> None:
    profile = load_profile("tiny")
    fresh = profile["notebooks"]["table1"]["fresh_seeds"]
    assert fresh and not set(fresh) & set(profile["global_params"]["seeds"])
    runs = sweep.plan("tiny", ROOT, Path("unused"))
    assert set(fresh) <= {run.config.train.seed for run in runs}
    clash = {**profile, "notebooks": {**profile["notebooks"], "table1": {**profile["notebooks"]["table1"], "fresh_seeds": [1, 9]}}}
    with pytest.raises(ValueError, match=r"fresh_seeds must be disjoint from seeds \[0, 1\]; both hold \[1\]"):
        needed_runs(clash, declared_parameters(ROOT, ["table1"]), Path("unused"))


def test_a_phase_cost_is_forward_macs_times_images_times_epochs() -> None:
    from mexit import data
    from mexit.config import load_config
    from mexit.flops import exit_costs
    from mexit.models import build_model

    config = load_config("tiny", ["train.regime=disjoint", "train.epochs=[2, 3]"])
    shape = data.input_shape(config.data)
    costs = exit_costs(build_model(config, shape, 10), shape)
    images = data.train_images(config.data)
    assert 1200 < images < 1400  # digits: 1797 images less a 20% test and a 10% validation split
    assert sweep.phase_macs(config) == [costs.backbone_macs * images * 2, costs.macs[-1] * images * 3]


def test_a_phase_cost_needs_no_published_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan for a GPU cluster is made where the published weights are not (offline here): the
    MACs of a pretrained row are its architecture's, built without its weights."""
    from mexit.config import load_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = ["model.backbone=tv/resnet18", "data.image_size=32", "train.epochs=[1, 1]"]
    pretrained = load_config("tiny", [*overrides, "model.pretrained=true"])
    assert sweep.phase_macs(pretrained) == sweep.phase_macs(load_config("tiny", overrides))


def test_the_paper_plan_needs_no_data_here(tmp_path: Path) -> None:
    profile, declared = load_profile("paper"), declared_parameters(ROOT, notebook_names(ROOT))
    with pytest.raises(ValueError, match="is not a folder on this machine"):
        needed_runs(profile, declared, tmp_path)  # the book needs the data
    planned = needed_runs(profile, declared, tmp_path, require_data=False)
    assert len(planned) > 200
    backbones = {config.model.backbone for _, config in planned.values()}
    assert {"resnet34", "resnet50", "msdnet"} <= backbones


def test_slurm_submission_is_shown_by_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mexit.cli import main

    monkeypatch.chdir(ROOT)
    code = main(["sweep", "--profile", "tiny", "--executor", "slurm", "--partition", "gpu", "--gpus-per-node", "2",
                 "--time", "90", "--dry-run", "--root", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    groups = len(sweep.groups(sweep.plan("tiny", ROOT, tmp_path)))
    assert code == 0 and f"#SBATCH --array=0-{groups - 1}%{min(groups, 64)}" in out
    assert "#SBATCH --ntasks-per-node=2" in out and "#SBATCH --partition=gpu" in out and "#SBATCH --time=90" in out
    assert f"would submit {groups} job(s) through slurm" in out
    assert not (tmp_path / "sweeps" / "tiny.json").exists()  # nothing submitted, nothing recorded


def test_bad_sweep_options_name_themselves() -> None:
    with pytest.raises(ValueError, match="threads must be at least 1"):
        sweep.JobOptions(threads=0).validate()
    with pytest.raises(ValueError, match="nodes > 1 .* gpus-per-node"):
        sweep.JobOptions(nodes=2).validate()
    with pytest.raises(ValueError, match="unknown executor='pbs'"):
        sweep.submit("tiny", ROOT, Path("unused"), "pbs")


def test_locks_follow_mexit_locks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from filelock import FileLock, SoftFileLock

    assert isinstance(file_lock(tmp_path / "a.lock"), FileLock)
    monkeypatch.setenv("MEXIT_LOCKS", "soft")
    lock = file_lock(tmp_path / "a.lock")
    assert isinstance(lock, SoftFileLock)
    with lock:
        assert (tmp_path / "a.lock").exists()
    monkeypatch.setenv("MEXIT_LOCKS", "nfs")
    with pytest.raises(ValueError, match="MEXIT_LOCKS must be one of os, soft"):
        file_lock(tmp_path / "a.lock")


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_killed_job_is_reported_failed_and_resumes_when_resubmitted(tmp_path: Path) -> None:
    profile = tmp_path / "slow.yaml"
    profile.write_text(
        "global_params:\n"
        "  rows: [{label: slow, config: tiny, overrides: ['train.epochs=[1, 8]', 'train.dominance_every=0']}]\n"
        "  seeds: [0]\n  regimes: [mixed]\n"
        "  variants: [{label: as is, overrides: []}]\n"  # the ablation pages read the row's own run
        "notebooks:\n  gradient_dominance: {equilibrium: false}\n"
    )
    store = tmp_path / "runs"
    [run] = sweep.plan(str(profile), ROOT, store)
    partial = store / "phases" / phase_keys(run.config)[1] / "partial.pt"
    [job] = sweep.submit(str(profile), ROOT, store, "local", sweep.JobOptions(jobs=1, time_min=30))
    assert sweep.last_submission(str(profile), store) == ("local", sweep.JobOptions(jobs=1, time_min=30))
    deadline = time.time() + 120
    while time.time() < deadline and not partial.exists():
        time.sleep(0.05)
    assert partial.exists(), "the job never reached P2"
    assert sweep.status(str(profile), ROOT, store)["state"].tolist() == ["running"]
    controller = int(job["job_id"])
    for pid in [*_descendants(controller), controller]:  # a node lost: the job dies without a word
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert sweep.status(str(profile), ROOT, store)["state"].tolist() == ["failed"]
    # --status reports it and resubmits it; the new job resumes from the checkpoint
    listed = subprocess.run(
        [sys.executable, "-m", "mexit", "sweep", "--profile", str(profile), "--status", "--root", str(store)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert "0 done, 0 pending, 0 running, 1 failed" in listed.stdout and "resubmitted 1 job(s)" in listed.stdout
    final = sweep.wait(str(profile), ROOT, store, poll_s=0.5)
    assert final.loc[final["key"] == run.key, "state"].tolist() == ["done"]  # the IC-design page plans more once it is stored
    from submitit.local.local import LocalJob

    [*_, record] = sweep._records(store, str(profile))
    log = LocalJob(Path(record["folder"]), record["jobs"][0]["job_id"]).stderr() or ""
    assert "P2] resuming after epoch" in log
