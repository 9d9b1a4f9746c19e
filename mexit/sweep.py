"""Every run a profile's book needs: planned (``mexit plan``) and submitted through submitit
(``mexit sweep``) to a SLURM cluster or to local subprocesses.

The plan is what the notebooks declare, read as ``mexit book`` reads it (:func:`mexit.plan.needed_runs`),
not a second list. Runs that share a phase (P1 of disjoint and mixed of one seed) form a *group*;
a job trains whole groups in order, so a shared phase is trained by the group's first run and
reused by the next, with no dependency between jobs. On SLURM each group is one task of a job
array; locally, the groups are dealt over ``jobs`` processes of ``threads`` threads each. A job
asking for several GPUs (``gpus_per_node`` x ``nodes``) trains each run under DDP, submitit
starting one task per GPU and mexit reading the ranks it exports (as under ``torchrun``).

Submissions are recorded in ``<runs root>/sweeps/<profile>.json``; ``status`` reads them with the
store: a run is ``done`` when the store holds it finished, else ``pending``, ``running`` or
``failed`` as its latest job is, or ``not submitted``. :func:`sweep` submits only groups with a run
neither done nor pending nor running, so calling it again resubmits failed and preempted jobs; they
resume from their runs' checkpoints. The store takes many writers: every file is written
atomically and a phase is trained under a lock (see :func:`mexit.store.file_lock` for network
filesystems); ``mexit book`` afterwards only reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mexit import checkpoint
from mexit.machine import available_memory, job_count, usable_cores
from mexit.plan import declared_parameters, load_profile, needed_runs, notebook_names
from mexit.config import RunConfig, stable_hash
from mexit.store import phase_keys
from mexit.throughput import Throughput, entry

EXECUTORS: tuple[str, ...] = ("local", "slurm")
STATES: tuple[str, ...] = ("done", "pending", "running", "failed", "not submitted")


@dataclass(frozen=True)
class PlannedRun:
    """One run the book needs: its key, the notebooks' label for it, its config and phase keys."""

    key: str
    label: str
    config: RunConfig
    phase_keys: tuple[str, ...]


@dataclass(frozen=True)
class JobOptions:
    """Where and how jobs run. ``time_min`` is each job's wall-time limit; ``threads`` the CPU
    threads of each task; ``jobs`` the local processes (SLURM: one array task per group, at most
    ``max_parallel`` at once)."""

    partition: str | None = None
    gpus_per_node: int = 0
    nodes: int = 1
    time_min: int = 24 * 60
    threads: int = 1
    jobs: int | None = None
    max_parallel: int = 64

    def validate(self) -> None:
        for name in ("gpus_per_node", "nodes", "time_min", "threads", "max_parallel"):
            low = 0 if name == "gpus_per_node" else 1
            if getattr(self, name) < low:
                raise ValueError(f"{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")
        if self.nodes > 1 and self.gpus_per_node == 0:
            raise ValueError("nodes > 1 trains under DDP across nodes and needs gpus-per-node >= 1")


def plan(profile: str, root: Path, runs_root: Path) -> list[PlannedRun]:
    """Every run the notebooks under ``root`` compare at ``profile``, in the order the book trains
    them; the datasets need not be on this machine (a plan made on a cluster's login node)."""
    declared = declared_parameters(root, notebook_names(root))
    needed = needed_runs(load_profile(profile), declared, runs_root, require_data=False)
    return [PlannedRun(key, label.strip(), config, tuple(phase_keys(config))) for key, (label, config) in needed.items()]


def groups(runs: Sequence[PlannedRun]) -> list[list[PlannedRun]]:
    """The runs split into groups that share no phase with one another, each in plan order."""
    group_of: dict[str, int] = {}
    members: list[list[PlannedRun]] = []
    for run in runs:
        joined = sorted({group_of[key] for key in run.phase_keys if key in group_of})
        if not joined:
            members.append([])
            joined = [len(members) - 1]
        target = joined[0]
        for other in joined[1:]:  # the run links groups: merge them into the first
            members[target].extend(members[other])
            members[other] = []
        members[target].append(run)
        for member in members[target]:
            for key in member.phase_keys:
                group_of[key] = target
    order = {run.key: index for index, run in enumerate(runs)}
    return [sorted(group, key=lambda run: order[run.key]) for group in members if group]


def plan_table(
    runs: Sequence[PlannedRun], runs_root: Path, *, costs: bool = True, throughput: Throughput | None = None
) -> pd.DataFrame:
    """One row per planned run: key, row, regime, seed, phases, shared (phases another planned run
    also uses), stored, and ``train_macs``: an estimate of its training cost, the forward MACs per
    image of each phase's model (P1: the backbone alone; P2, P3: every exit) x the images of an
    epoch x the phase's epoch cap, shared phases counted in each run that uses them. Early stopping
    may end a phase before its cap (``costs`` False leaves this column out). With a ``throughput``
    (:mod:`mexit.throughput`), ``gpu_hours``: those MACs at the measured rate of its backbone on its
    dataset (NaN where the file has none)."""
    users: dict[str, int] = {}
    for run in runs:
        for key in run.phase_keys:
            users[key] = users.get(key, 0) + 1
    rows = []
    for run in runs:
        train = run.config.train
        shared = [name for name, key in zip(train.phase_list, run.phase_keys) if users[key] > 1]
        rows.append(
            {
                "key": run.key,
                "row": run.label.rsplit(" ", 2)[0],
                "regime": train.regime if train.phases is None else "+".join(train.phases),
                "seed": train.seed,
                "phases": "+".join(train.phase_list),
                "shared": "+".join(shared),
                "stored": (runs_root / "runs" / run.key / "metrics.json").exists(),
                **({"train_macs": sum(phase_macs(run.config))} if costs else {}),
                **({"gpu_hours": _hours(run.config, throughput)} if throughput is not None else {}),
            }
        )
    return pd.DataFrame(rows)


def total_train_macs(runs: Sequence[PlannedRun]) -> float:
    """The plan's estimated training cost (see :func:`plan_table`), each shared phase counted once."""
    costs: dict[str, float] = {}
    for run in runs:
        costs.update(zip(run.phase_keys, phase_macs(run.config)))
    return sum(costs.values())


def total_gpu_hours(runs: Sequence[PlannedRun], throughput: Throughput) -> tuple[float, list[str]]:
    """The plan's estimated hours on the throughput file's device, each shared phase counted once,
    and the runs' ``backbone/dataset`` entries the file does not measure (left out of the sum)."""
    hours: dict[str, float] = {}
    unmeasured: set[str] = set()
    for run in runs:
        seconds = throughput.phase_seconds(run.config, phase_macs(run.config))
        if seconds is None:
            unmeasured.add(entry(run.config))
            continue
        hours.update(zip(run.phase_keys, (s / 3600 for s in seconds)))
    return sum(hours.values()), sorted(unmeasured)


def _hours(config: RunConfig, throughput: Throughput) -> float:
    seconds = throughput.phase_seconds(config, phase_macs(config))
    return math.nan if seconds is None else sum(seconds) / 3600


_FORWARD_MACS: dict[str, tuple[float, float]] = {}


def phase_macs(config: RunConfig) -> list[float]:
    """Each phase's estimated training MACs: forward MACs per image x images x epoch cap."""
    from mexit import data

    model_key = stable_hash({"model": asdict(config.model), "data": asdict(config.data)})
    if model_key not in _FORWARD_MACS:
        _FORWARD_MACS[model_key] = _forward_macs(config)
    backbone, every_exit = _FORWARD_MACS[model_key]
    images = data.train_images(config.data, holdout=config.train.holds_out_validation)
    return [
        (backbone if name == "P1" else every_exit) * images * epochs
        for name, epochs in zip(config.train.phase_list, config.train.phase_epochs)
    ]


def _forward_macs(config: RunConfig) -> tuple[float, float]:
    from mexit import data
    from mexit.flops import exit_costs
    from mexit.models import build_model

    shape = data.input_shape(config.data)
    model = build_model(config.without_weights(), shape, data.STANDARD_CLASSES[config.data.name])  # a plan made where the weights are not
    costs = exit_costs(model, shape)
    return float(costs.backbone_macs), float(costs.macs[-1])


# --- jobs ------------------------------------------------------------------------------------


def train_group(runs_root: str, configs: list[dict[str, Any]], keys: list[str], threads: int) -> list[str]:
    """A job's work: each run in order, found if stored, resumed if interrupted, trained otherwise."""
    import submitit
    import torch

    from mexit.pipeline import train_or_load
    from mexit.store import RunStore

    torch.set_num_threads(threads)
    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:  # one task per GPU: DDP, with the ranks torchrun would export
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    store = RunStore(runs_root)
    for config_dict, key in zip(configs, keys):
        config = RunConfig.from_dict(config_dict)
        if config.key() != key:
            raise RuntimeError(f"run {key} became {config.key()} in the job: the job's mexit differs from the planner's")
        train_or_load(store, config, progress_label=f"{key} ")
    return keys


def _executor(kind: str, folder: Path, options: JobOptions) -> Any:
    import submitit

    if kind == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_min, gpus_per_node=options.gpus_per_node)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)  # needs SLURM's srun on this machine
    executor.update_parameters(**_slurm_parameters(options))
    return executor


def _slurm_parameters(options: JobOptions) -> dict[str, Any]:
    """sbatch settings: one task per GPU (each a DDP rank), ``threads`` CPUs per task."""
    return {
        "time": options.time_min, "nodes": options.nodes, "ntasks_per_node": max(1, options.gpus_per_node),
        "gpus_per_node": options.gpus_per_node or None, "cpus_per_task": options.threads,
        "array_parallelism": options.max_parallel, "job_name": "mexit",
        **({"partition": options.partition} if options.partition else {}),
    }


def _sbatch_script(folder: Path, options: JobOptions, array_size: int) -> str:
    """The job array's sbatch script, as submitit would write it (no SLURM needed to show it)."""
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{sys.executable} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **_slurm_parameters(options))


def job_batches(run_groups: list[list[PlannedRun]], kind: str, options: JobOptions) -> list[list[PlannedRun]]:
    """SLURM: one job per group. Local: the groups dealt over ``jobs`` processes, the costliest
    first, each to the process with the least estimated work so far."""
    if kind == "slurm":
        return run_groups
    count = min(len(run_groups), options.jobs or job_count(usable_cores() // options.threads, available_memory()))
    batches: list[list[PlannedRun]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for cost, group in sorted(((total_train_macs(group), group) for group in run_groups), key=lambda pair: -pair[0]):
        lightest = loads.index(min(loads))
        batches[lightest].extend(group)
        loads[lightest] += cost
    return [batch for batch in batches if batch]


def _record_path(runs_root: Path, profile: str) -> Path:
    return runs_root / "sweeps" / f"{Path(profile).stem}.json"


def _records(runs_root: Path, profile: str) -> list[dict[str, Any]]:
    path = _record_path(runs_root, profile)
    return checkpoint.read_json(path) if path.exists() else []


def last_submission(profile: str, runs_root: Path) -> tuple[str, JobOptions] | None:
    """The executor and options of the profile's latest submission (what a resubmission reuses)."""
    records = _records(runs_root, profile)
    return (records[-1]["executor"], JobOptions(**records[-1]["options"])) if records else None


def submit(
    profile: str,
    root: Path,
    runs_root: Path,
    kind: str = "local",
    options: JobOptions | None = None,
    *,
    dry_run: bool = False,
    states: Sequence[str] = ("failed", "not submitted"),
) -> list[dict[str, Any]]:
    """Submit a job for every group with a run in one of ``states`` (by default every run that is
    neither done nor pending nor running).

    Returns the jobs: ``{"job_id", "runs"}`` each (``job_id`` None in a dry run). A dry run
    submits nothing and, for SLURM, returns the job array's sbatch script as ``{"sbatch": ...}``
    at the end.
    """
    options = options or JobOptions()
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor={kind!r}; allowed: {', '.join(EXECUTORS)}")
    options.validate()
    runs = plan(profile, root, runs_root)
    for run in runs:  # every config is checked before anything is submitted
        run.config.validate()
    table = status(profile, root, runs_root, runs=runs)
    wanted = set(table.loc[table["state"].isin(states), "key"])
    todo = [group for group in groups(runs) if any(run.key in wanted for run in group)]
    batches = job_batches(todo, kind, options)
    folder = (runs_root / "sweeps" / "jobs").resolve()
    arguments = [
        ([run.config.to_dict() for run in batch], [run.key for run in batch]) for batch in batches
    ]
    if dry_run:
        jobs: list[dict[str, Any]] = [{"job_id": None, "runs": keys} for _, keys in arguments]
        if kind == "slurm" and batches:
            jobs.append({"sbatch": _sbatch_script(folder, options, len(batches))})
        return jobs
    if not batches:
        return []
    submitted = _executor(kind, folder, options).map_array(
        train_group,
        [str(runs_root.resolve())] * len(batches),
        [configs for configs, _ in arguments],
        [keys for _, keys in arguments],
        [options.threads] * len(batches),
    )
    jobs = [{"job_id": job.job_id, "runs": keys} for job, (_, keys) in zip(submitted, arguments)]
    record = {"executor": kind, "folder": str(folder), "options": asdict(options), "jobs": jobs, "submitted": time.time()}
    _record_path(runs_root, profile).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(_record_path(runs_root, profile), [*_records(runs_root, profile), record])
    return jobs


def status(profile: str, root: Path, runs_root: Path, *, runs: Sequence[PlannedRun] | None = None) -> pd.DataFrame:
    """One row per planned run: key, row, regime, seed, ``state`` (one of :data:`STATES`) and the
    job id of its latest submission ("" if none)."""
    runs = plan(profile, root, runs_root) if runs is None else runs
    if not runs:
        return pd.DataFrame(columns=["key", "row", "regime", "seed", "state", "job"])
    latest: dict[str, tuple[str, str, str]] = {}  # run key -> (executor, folder, job id)
    for record in _records(runs_root, profile):
        for job in record["jobs"]:
            for key in job["runs"]:
                latest[key] = (record["executor"], record["folder"], job["job_id"])
    job_states: dict[str, str] = {}
    table = plan_table(runs, runs_root, costs=False)[["key", "row", "regime", "seed", "stored"]]
    states, job_ids = [], []
    for key, stored in zip(table["key"], table["stored"]):
        kind, folder, job_id = latest.get(key, ("", "", ""))
        if job_id and job_id not in job_states:
            job_states[job_id] = job_state(kind, Path(folder), job_id)
        if stored:
            states.append("done")
        else:
            states.append({"finished": "failed", "": "not submitted"}.get(job_states.get(job_id, ""), job_states.get(job_id)))
        job_ids.append(job_id)
    return table.drop(columns="stored").assign(state=states, job=job_ids)


def state_counts(table: pd.DataFrame) -> str:
    """One line: how many runs of a :func:`status` table are in each of :data:`STATES`."""
    counts = table["state"].value_counts()
    return ", ".join(f"{counts.get(state, 0)} {state}" for state in STATES)


def job_state(kind: str, folder: Path, job_id: str) -> str:
    """``pending``, ``running``, ``finished`` (its function returned) or ``failed`` (raised, was
    killed, cancelled, preempted or timed out)."""
    if kind == "local":
        from submitit.core.utils import pickle_load
        from submitit.local.local import LocalJob

        result = LocalJob(folder, job_id).paths.result_pickle
        if result.exists():
            outcome, _ = pickle_load(result)
            return "finished" if outcome == "success" else "failed"
        return "running" if _submitit_process_alive(int(job_id)) else "failed"
    import submitit

    state = submitit.SlurmJob(folder, job_id).state.upper()
    if state in ("PENDING", "REQUEUED", "CONFIGURING"):
        return "pending"
    if state in ("RUNNING", "COMPLETING", "UNKNOWN"):
        return "running"
    return "finished" if state == "COMPLETED" else "failed"


def _submitit_process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs and is a submitit job (a finished job's pid may be reused)."""
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait(profile: str, root: Path, runs_root: Path, poll_s: float = 2.0) -> pd.DataFrame:
    """Block until no planned run is pending or running; returns the final :func:`status`."""
    runs = plan(profile, root, runs_root)
    while True:
        table = status(profile, root, runs_root, runs=runs)
        if not table["state"].isin(["pending", "running"]).any():
            return table
        time.sleep(poll_s)
