"""The run store: every trained model is a run, keyed by a stable hash of its full config and of
the training code (:func:`mexit.config.code_identity`).

Layout under ``root`` (default ``runs/``, or ``$MEXIT_RUNS``)::

    runs/<run key>/     config.json, phases.json, logits.pt (per-exit logits on val and test, float16),
                        costs.json (per-exit MACs), metrics.json (written last: the run is complete)
    phases/<phase key>/ state.pt (weights after the phase), partial.pt (resume point),
                        phase.json (wall time, epochs, early stop), trace.csv, probes.csv
    analyses/<kind>/<key>.csv  an analysis of stored runs (:meth:`RunStore.cached_table`), keyed by
                        the runs' keys and the analysis's parameters

A phase is keyed by the config up to and including it, so regimes that begin alike share work:
disjoint (P1, P3) and mixed (P1, P2) of the same seed train P1 once. Asking for a run that exists
loads it; an interrupted one resumes; two processes asking for the same run take turns on a file
lock, and the second finds the first one's result.

torch and the training code are imported where a run is trained or its tensors read, so that
listing and showing runs (``mexit runs``) starts without them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from mexit import checkpoint, fingerprint
from mexit.config import RunConfig, code_identity, data_identity, model_identity, stable_hash

if TYPE_CHECKING:
    import torch

    from mexit.evaluate import ExitOutputs
    from mexit.train import PhaseResult

DEFAULT_ROOT = "runs"


def default_root() -> Path:
    return Path(os.environ.get("MEXIT_RUNS", DEFAULT_ROOT))


LOCK_KINDS: tuple[str, ...] = ("os", "soft")


def file_lock(path: Path) -> BaseFileLock:
    """The lock guarding one phase's training or one analysis, by ``$MEXIT_LOCKS``:

    - ``os`` (the default): an ``fcntl`` lock, released by the kernel when its holder dies. It holds
      on local disks and on network filesystems whose locks work across machines (NFSv4, Lustre and
      BeeGFS mounted with ``flock``).
    - ``soft``: a lock file created exclusively (``O_EXCL``), which holds on any shared filesystem,
      but outlives a holder that was killed: remove the stale ``.lock`` file by hand then.
    """
    kind = os.environ.get("MEXIT_LOCKS", "os")
    if kind not in LOCK_KINDS:
        raise ValueError(f"MEXIT_LOCKS must be one of {', '.join(LOCK_KINDS)}, got {kind!r}")
    return SoftFileLock(str(path)) if kind == "soft" else FileLock(str(path))


BACKBONE_FIELDS: tuple[str, ...] = ("backbone", "backbone_kwargs", "pretrained", "checkpoint_sha256")
"""The model settings a leading P1 depends on (of :func:`mexit.config.model_identity`): it trains the
backbone alone, without computing the ICs, from initial weights drawn before any IC is built
(:func:`mexit.models.build_model`) or loaded: published ones named by their tag, a checkpoint by
its file's SHA-256 (not its path), so that a transfer start never stands in for a start from scratch
or from other weights."""


PHASE_KEY_EXEMPT: dict[str, str] = {
    "regime": "a run's phase list, which its regime names, is in the key; the P1 that disjoint and mixed begin with is one phase",
}
"""The train settings that phase keys leave out, each with the reason it cannot change a phase
(tested: every other setting changes some phase key)."""


def phase_keys(config: RunConfig) -> list[str]:
    """The key of the state after each phase: a hash of everything that phase's weights depend on.
    A run's first phase, when it is P1, leaves the ICs out (:data:`BACKBONE_FIELDS`), so that the
    disjoint and mixed runs of every IC configuration (placement, head, method) share one P1 per seed."""
    train = config.train
    model = model_identity(config.model)
    common = {
        "data": data_identity(config.data),
        "seed": train.seed,
        "patience": train.patience,
        "stopping": train.stopping,
        "eval_every": train.eval_every,
        "eval_batch_size": train.eval_batch_size,  # with eval_batches, which validation images early stopping sees
        "num_workers": train.num_workers,
        "channels_last": train.channels_last,
        "max_steps": train.max_steps,
        "eval_batches": train.eval_batches,
        **code_identity(),
    }
    keys: list[str] = []
    prefix: list[dict[str, Any]] = []
    for index, name in enumerate(train.phase_list):
        step: dict[str, Any] = {
            "phase": name,
            "epochs": train.phase_epochs[index],
            "optim": dataclasses.asdict(train.optim_for(index)),
        }
        if name != "P1":  # settings that only matter once ICs train
            step["loss_weights"] = train.loss_weights
        if name == "P3":
            step["p3_loss"] = train.p3_loss
        if name == "P2":  # settings that only matter when backbone and ICs train together
            step.update(gradient_equilibrium=train.gradient_equilibrium, equilibrium=train.equilibrium, dominance_every=train.dominance_every)
        prefix.append(step)
        if prefix == [step] and name == "P1":  # the backbone alone from its initial weights: ICs play no part
            identity = {field: model.get(field) for field in BACKBONE_FIELDS}
        else:
            identity = model
        keys.append(stable_hash({**common, "model": identity, "phases": prefix}))
    return keys


def table_record(code: str) -> dict[str, str]:
    """What an analysis table keeps beside it of the code that made it: the computing module and
    its fingerprint, so that a table made by other code can be reported (:mod:`mexit.stale`)."""
    return {"code": code, "fingerprint": fingerprint.code_fingerprint((code,))}


def table_key(kind: str, inputs: dict[str, Any], code: str) -> str:
    """The key of an analysis table (:meth:`RunStore.cached_table`): its kind, inputs, the package
    version and the fingerprint of the code that computes it (``code``, a module name)."""
    from mexit import __version__

    return stable_hash({"kind": kind, "mexit": __version__, "code": fingerprint.code_fingerprint((code,)), **inputs})


class Run:
    """A completed run read back from the store."""

    def __init__(self, path: Path):
        self.path = path
        self.key = path.name
        self.config = RunConfig.from_dict(checkpoint.read_json(path / "config.json"))
        self.metrics: dict[str, Any] = checkpoint.read_json(path / "metrics.json")
        self._phase_dirs = [path.parent.parent / "phases" / key for key in checkpoint.read_json(path / "phases.json")]
        self._logits: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        train = self.config.train
        return f"Run({self.key}: {self.config.model.backbone} on {self.config.data.name}, {'+'.join(train.phase_list)}, seed {train.seed})"

    def _load_logits(self) -> dict[str, torch.Tensor]:
        if self._logits is None:
            self._logits = checkpoint.load_tensors(self.path / "logits.pt")
        return self._logits

    @property
    def has_validation(self) -> bool:
        """Whether the run held out a validation split (not under the authors' rule without early stopping)."""
        return "val" in self._load_logits()

    def logits(self, split: str = "test") -> torch.Tensor:
        """Every exit's logits on ``val`` or ``test``: ``[exits, samples, classes]``, float32 (stored
        as :func:`compact_logits` keeps them)."""
        return self._load_logits()[self._stored(split)].float()

    def labels(self, split: str = "test") -> torch.Tensor:
        return self._load_logits()[f"{self._stored(split)}_labels"]

    def _stored(self, split: str) -> str:
        _check_split(split)
        if split == "val" and not self.has_validation:
            raise ValueError(
                f"run {self.key} has no validation split: under train.stopping=restore-on-stop without early stopping every "
                "training image trains"
            )
        return split

    @property
    def costs(self) -> dict[str, Any]:
        """Per-exit cumulative MACs (``macs``) and the backbone-only MACs (``backbone_macs``)."""
        return checkpoint.read_json(self.path / "costs.json")

    def trace(self) -> pd.DataFrame:
        """Per-exit training loss and validation accuracy at every evaluation, all phases (P1's
        columns, recorded for the final exit as ``*_final``, named by this run's final exit index)."""
        final = str(len(self.metrics["test_acc"]) - 1)
        frames = [pd.read_csv(d / "trace.csv") for d in self._phase_dirs]
        frames = [frame.rename(columns=lambda c: c.removesuffix("final") + final if c.endswith("_final") else c) for frame in frames]
        return pd.concat(frames, ignore_index=True)

    def phases(self) -> pd.DataFrame:
        """One row per phase of the run: ``phase``, ``phase_key`` (shared phases share it),
        ``epoch_cap``, ``wall_time_s``, ``epochs_run``, ``steps``, ``stopped_early`` and ``best_step``."""
        names, caps = self.metrics["phases"], self.config.train.phase_epochs
        return pd.DataFrame(
            [
                {"phase": name, "phase_key": d.name, "epoch_cap": cap, **checkpoint.read_json(d / "phase.json")}
                for name, cap, d in zip(names, caps, self._phase_dirs)
            ]
        )

    def probes(self) -> pd.DataFrame:
        """Rows recorded by training probes (gradient dominance), all phases; empty if none ran."""
        frames = [pd.read_csv(d / "probes.csv") for d in self._phase_dirs if (d / "probes.csv").exists()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def phase_states(self) -> list[dict[str, torch.Tensor]]:
        """The model's state after each phase, in order (a P1 state holds the backbone only): what
        :func:`mexit.pipeline.trained_model` loads into the model it builds."""
        return [checkpoint.load_tensors(phase_dir / "state.pt")["model"] for phase_dir in self._phase_dirs]

    def outputs(self, **tags: Any) -> ExitOutputs:
        """The run's test (and validation) logits, labels and costs for :mod:`mexit.evaluate`."""
        from mexit.evaluate.tables import ExitOutputs

        train = self.config.train
        default_tags = {
            "regime": train.regime if train.phases is None else "+".join(train.phases),
            "method": self.config.model.method,
            "seed": train.seed,
            "backbone": self.config.model.backbone,
            "run": self.key,
        }
        costs = self.costs
        return ExitOutputs(
            test_logits=self.logits("test").numpy(),
            test_labels=self.labels("test").numpy(),
            costs=costs["macs"],
            backbone_cost=costs["backbone_macs"],
            val_logits=self.logits("val").numpy() if self.has_validation else None,
            val_labels=self.labels("val").numpy() if self.has_validation else None,
            tags={**default_tags, **tags},
        )


RUN_JSON: tuple[str, ...] = ("config.json", "phases.json", "metrics.json", "costs.json")


def run_problem(run_dir: Path) -> str | None:
    """Why the run at ``run_dir`` cannot be read, or None: ``"unfinished"`` (no ``metrics.json``:
    training stopped or is under way) or ``"damaged: <file> (<why>)"`` (a JSON file that does not
    parse or no longer matches its sha256, or ``logits.pt`` missing). Tensor files are checked
    against their sha256 when loaded."""
    if not (run_dir / "metrics.json").exists():
        return "unfinished"
    for name in RUN_JSON:
        try:
            checkpoint.read_json(run_dir / name)
        except (OSError, checkpoint.CorruptCheckpointError) as error:
            why = str(error).splitlines()[0].removeprefix(f"{run_dir / name}: ").split("; remove it")[0]
            return f"damaged: {name} ({why[:100]})"
    if not (run_dir / "logits.pt").exists():
        return "damaged: logits.pt (missing)"
    return None


class RunStore:
    """Stored runs, phases and analyses; see the module docstring for the layout. Training into
    it is :func:`mexit.pipeline.train_or_load`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def run_dir(self, config: RunConfig) -> Path:
        """Where the run of ``config`` is (or will be) stored."""
        return self.root / "runs" / config.key()

    def phase_dir(self, key: str) -> Path:
        """Where the phase of ``key`` (:func:`phase_keys`) is (or will be) stored."""
        return self.root / "phases" / key

    def load(self, config: RunConfig) -> Run | None:
        """The stored run of ``config``, or None where it is not finished (or was damaged, and set aside)."""
        run_dir = self.run_dir(config)
        if (run_dir / "metrics.json").exists() and self._usable(run_dir):
            return Run(run_dir)
        return None

    def load_phase(self, key: str) -> dict[str, Any] | None:
        """The stored state after phase ``key`` (``{"model": state dict}``), or None where the phase
        is not stored whole (a damaged record or state is set aside, so that it is trained again)."""
        phase_dir = self.phase_dir(key)
        if (phase_dir / "phase.json").exists() and _phase_record_intact(phase_dir):
            return checkpoint.load_or_quarantine(phase_dir / "state.pt")
        return None

    def save_phase(self, key: str, result: PhaseResult) -> None:
        """Store a finished phase: its kept state, trace, probes and record (written last), and
        delete its resume point."""
        phase_dir = self.phase_dir(key)
        checkpoint.save_tensors(phase_dir / "state.pt", {"model": result.state})
        trace = pd.DataFrame(result.trace, columns=None if result.trace else ["phase", "epoch", "step"])  # none without evaluations
        checkpoint.write_bytes_atomic(phase_dir / "trace.csv", trace.to_csv(index=False).encode())
        if result.probes:
            checkpoint.write_bytes_atomic(phase_dir / "probes.csv", pd.DataFrame(result.probes).to_csv(index=False).encode())
        checkpoint.write_json(
            phase_dir / "phase.json",
            {
                "wall_time_s": result.wall_time_s,
                "epochs_run": result.epochs_run,
                "steps": result.steps,
                "stopped_early": result.stopped_early,
                "best_step": result.best_step,
            },
        )
        (phase_dir / "partial.pt").unlink(missing_ok=True)

    def phase_record(self, key: str) -> dict[str, Any]:
        return checkpoint.read_json(self.phase_dir(key) / "phase.json")

    def begin_run(self, config: RunConfig) -> None:
        """Write a run's config and phase keys before it trains, so that an unfinished run can be
        found (``mexit runs``) and removed."""
        run_dir = self.run_dir(config)
        checkpoint.write_json(run_dir / "config.json", config.to_dict())
        checkpoint.write_json(run_dir / "phases.json", phase_keys(config))

    def finish_run(self, config: RunConfig, logits: dict[str, torch.Tensor], costs: dict[str, Any], metrics: dict[str, Any]) -> Run:
        """Store a trained run's logits (:func:`compact_logits` applied), costs and metrics (written
        last: from then on the run is finished)."""
        run_dir = self.run_dir(config)
        stored = {name: compact_logits(value) if value.is_floating_point() else value for name, value in logits.items()}
        checkpoint.save_tensors(run_dir / "logits.pt", stored)
        checkpoint.write_json(run_dir / "costs.json", costs)
        checkpoint.write_json(run_dir / "metrics.json", {"key": run_dir.name, **metrics})
        return Run(run_dir)

    def _usable(self, run_dir: Path) -> bool:
        """Whether a finished run's files are whole; a damaged run is reported and moved aside to
        ``<key>.damaged`` (kept for inspection), so that it is trained again, its intact phases reused."""
        problem = run_problem(run_dir)
        if problem is None:
            try:
                checkpoint.load_tensors(run_dir / "logits.pt")
                return True
            except checkpoint.CorruptCheckpointError as error:
                problem = f"damaged: logits.pt ({error})"
        aside = run_dir.with_name(run_dir.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(run_dir, aside)
        except FileNotFoundError:  # another process set it aside first
            return False
        print(f"mexit: run {run_dir.name} is {problem}; moved it to {aside.name} and training it again", file=sys.stderr, flush=True)
        return False

    def run_dirs(self) -> list[Path]:
        """Every run folder in the store, finished or not (runs set aside as damaged excluded)."""
        base = self.root / "runs"
        return sorted(d for d in base.iterdir() if d.is_dir() and "." not in d.name) if base.exists() else []

    def runs(self) -> list[Run]:
        """The finished, readable runs."""
        return [Run(d) for d in self.run_dirs() if run_problem(d) is None]

    def table(self) -> pd.DataFrame:
        """One row per run folder: key, state (``finished``, ``unfinished`` or ``damaged: ...``),
        data, backbone, regime, seed, final and best exit accuracy (blank where unknown)."""
        rows = []
        for run_dir in self.run_dirs():
            problem = run_problem(run_dir)
            if problem is not None:
                rows.append({"key": run_dir.name, "state": problem})
                continue
            run = Run(run_dir)
            train = run.config.train
            rows.append(
                {
                    "key": run.key,
                    "state": "finished",
                    "dataset": run.config.data.name,
                    "backbone": run.config.model.backbone,
                    "method": run.config.model.method,
                    "phases": "+".join(train.phase_list),
                    "epochs": "/".join(map(str, train.phase_epochs)),
                    "seed": train.seed,
                    "final_acc": round(run.metrics["test_acc"][-1], 2),
                    "best_exit_acc": round(max(run.metrics["test_acc"]), 2),
                    "train_s": round(sum(run.metrics["phase_wall_time_s"]), 1),
                }
            )
        return pd.DataFrame(rows).fillna("") if rows else pd.DataFrame()

    def cached_table(self, kind: str, inputs: dict[str, Any], compute: Callable[[], pd.DataFrame], *, code: str) -> pd.DataFrame:
        """The table ``compute()`` returns for ``inputs``, computed once and kept under ``analyses/``.

        ``kind`` names the analysis (a folder name); ``inputs`` must hold everything the result
        depends on besides code (the keys of the runs it reads, its parameters), as JSON-able
        values; ``code`` is the module that computes it (its ``__name__``). The key is the hash of
        both, with the fingerprint of that module and of every ``mexit`` module it imports
        (:func:`mexit.fingerprint.code_fingerprint`): a table made by other code is never served.
        The file is written atomically under a lock, so a concurrent or interrupted computation
        never leaves a half-written table.
        """
        if not kind or not kind.replace("_", "").isalnum():
            raise ValueError(f"kind must be a name of letters, digits and underscores, got {kind!r}")
        path = self.root / "analyses" / kind / f"{table_key(kind, inputs, code)}.csv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(path.with_suffix(".lock")):
                if not path.exists():
                    checkpoint.write_json(path.with_suffix(".json"), table_record(code))
                    checkpoint.write_bytes_atomic(path, compute().to_csv(index=False).encode())
        return pd.read_csv(path)

    def find(self, key_prefix: str) -> Path:
        base = self.root / "runs"
        matches = [d for d in self.run_dirs() if d.name.startswith(key_prefix)] if key_prefix else []
        if len(matches) != 1:
            known = [d.name for d in self.run_dirs()]
            found = "no run matches" if not matches else f"{len(matches)} runs match"
            listing = f"; stored: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}" if known else ""
            raise KeyError(f"{found} key {key_prefix!r} in {base}{listing}")
        return matches[0]

    def remove(self, key_prefix: str) -> list[Path]:
        """Delete a run (finished or not) and every phase no other run uses; returns what was removed."""
        run_dir = self.find(key_prefix)
        mine = set(checkpoint.read_json(run_dir / "phases.json")) if (run_dir / "phases.json").exists() else set()
        others = {
            key
            for d in (self.root / "runs").iterdir()
            if d != run_dir and (d / "phases.json").exists()
            for key in checkpoint.read_json(d / "phases.json")
        }
        removed = [run_dir] + [self.root / "phases" / key for key in sorted(mine - others)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    @contextmanager
    def lock(self, directory: Path, enabled: bool = True) -> Iterator[None]:
        if not enabled:
            yield
            return
        directory.mkdir(parents=True, exist_ok=True)
        lock = file_lock(directory / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"mexit: another process is training {directory}; waiting for it, then using its result",
                  file=sys.stderr, flush=True)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()


def _phase_record_intact(phase_dir: Path) -> bool:
    """Whether ``phase.json`` reads; a damaged one is reported and set aside, so the phase is trained again."""
    try:
        checkpoint.read_json(phase_dir / "phase.json")
        return True
    except checkpoint.CorruptCheckpointError as error:
        os.replace(phase_dir / "phase.json", phase_dir / "phase.json.corrupt")
        print(f"mexit: {error}; moved it to phase.json.corrupt and training the phase again", file=sys.stderr, flush=True)
        return False


def compact_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits as stored: float16 (2 bytes a value, ImageNet's 1000 classes x 50,000 images x 13
    exits in 1.3 GB), or float32 where a value would not fit. float16 keeps 11 significant bits:
    a logit ``z`` moves by at most ``|z| / 2048`` and a sample's confidence by about half the largest
    such move, 1e-3 while its logits stay under 4 in size, 0.008 for logits of 32-64; a threshold
    sweep's accuracy moves by a few samples' worth (tested against float32: 0.05 points at most on
    10,000 samples)."""
    import torch

    half = logits.half()
    return half if bool(torch.isfinite(half).all()) else logits


def _check_split(split: str) -> None:
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: val, test")
