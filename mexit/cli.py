"""The ``mexit`` command: train runs, list/show/remove stored runs, build the book.

    mexit train --config mnist5k-quick --regimes disjoint joint mixed --seeds 0 1 2
    mexit train --config my.yaml train.epochs=30 model.placement=[2,4,6]
    mexit train --config resnet50-tinyimagenet --regimes disjoint mixed --dry-run
    mexit runs list | show KEY | remove KEY
    mexit book --profile quick [--only table1 ...] [--no-train]
    mexit book --profile paper --smoke DIR
    mexit plan --profile paper
    mexit sweep --profile paper --executor slurm --partition gpu --gpus-per-node 4 [--dry-run]
    mexit sweep --profile paper --status
    mexit smoke-data DIR [--train-per-class 10 --test-per-class 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mexit.config import REGIMES, RunConfig, load_config, regime_configs, shipped_configs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mexit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root_help = "run store directory (default: $MEXIT_RUNS or ./runs)"
    parser.add_argument("--root", default=None, help=root_help)
    common = argparse.ArgumentParser(add_help=False)  # --root is accepted after the command too
    common.add_argument("--root", default=argparse.SUPPRESS, help=root_help)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[common], help="train (or load) runs")
    train.add_argument("--config", default="mnist5k-quick", help=f"a YAML file or one of: {', '.join(shipped_configs())}")
    train.add_argument("--regimes", nargs="+", metavar="REGIME", help=f"train each of these regimes ({', '.join(REGIMES)})")
    train.add_argument("--seeds", nargs="+", metavar="SEED", help="train each of these seeds")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--dry-run", action="store_true", help="show each run's resolved config and phases; train nothing")
    train.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. train.epochs=30")

    runs = commands.add_parser("runs", parents=[common], help="list, show, check or remove stored runs")
    runs.add_argument("action", choices=("list", "show", "check", "remove"),
                      help="check: which stored runs and analysis tables were made by code other than today's")
    runs.add_argument("key", nargs="?", help="a run key (or a unique prefix of one)")

    book = commands.add_parser("book", parents=[common], help="execute the notebooks at a profile and build the book")
    book.add_argument("--profile", default="quick")
    book.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="re-execute only these notebooks (names in notebooks/); the others keep their executed copies")
    book.add_argument("--force", action="store_true", help="re-execute every notebook, even those whose source, parameters, code, data and runs are unchanged")
    book.add_argument("--no-build", action="store_true", help="execute the notebooks only")
    book.add_argument("--jobs", type=int, default=1, help="train the missing runs in this many single-threaded processes")
    book.add_argument(
        "--no-train", action="store_true",
        help="train nothing: every run the notebooks read must be stored (after 'mexit sweep'); a missing one is named",
    )
    book.add_argument(
        "--smoke", metavar="DIR",
        help="a smoke build: every run of the profile capped to a few steps on generated data in DIR (written there when "
        "missing), its runs in DIR/runs, its book in DIR/book; see mexit/smoke.py",
    )

    plan = commands.add_parser("plan", parents=[common], help="list every run the book needs at a profile, with its cost")
    plan.add_argument("--profile", default="quick")
    plan.add_argument(
        "--throughput", metavar="FILE",
        help="measured training rates (benchmarks/paper_throughput.py --write FILE) that turn MACs into GPU-hours "
        "(default: throughput.json in the run store's folder)",
    )

    sweep = commands.add_parser("sweep", parents=[common], help="submit every missing run of a profile through submitit")
    sweep.add_argument("--profile", default="quick")
    sweep.add_argument("--executor", choices=("local", "slurm"), default="local")
    sweep.add_argument("--status", action="store_true", help="show each run's state, and resubmit failed jobs as last submitted")
    sweep.add_argument("--dry-run", action="store_true", help="show the jobs (and SLURM's sbatch script) without submitting")
    sweep.add_argument("--wait", action="store_true", help="return when no job is pending or running and the plan, made again once they are done, lists no run more")
    sweep.add_argument("--partition", help="SLURM partition")
    sweep.add_argument("--gpus-per-node", type=int, default=0, help="GPUs of each job; more than one trains under DDP")
    sweep.add_argument("--nodes", type=int, default=1)
    sweep.add_argument("--time", type=int, default=24 * 60, metavar="MINUTES", help="each job's wall-time limit")
    sweep.add_argument("--threads", type=int, default=1, help="CPU threads of each task")
    sweep.add_argument("--jobs", type=int, help="local processes (default: the usable CPU cores / threads, no more than memory holds at 2 GiB each)")
    sweep.add_argument("--max-parallel", type=int, default=64, help="SLURM array tasks running at once")

    smoke = commands.add_parser("smoke-data", help="write CIFAR-100, TinyImageNet and ImageNet in their real layouts, random pixels")
    smoke.add_argument("directory", help="a new folder; each dataset lands in DIRECTORY/<name>, its data_root")
    smoke.add_argument("--train-per-class", type=int, default=10, help="training images a class (10: a 10%% validation split holds every class)")
    smoke.add_argument("--test-per-class", type=int, default=2, help="test images a class")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "runs":
            return _runs(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "smoke-data":
            return _smoke_data(args)
        from mexit.book import build_book, build_smoke_book

        if args.smoke:
            if args.root:
                raise ValueError("--smoke keeps its runs in DIR/runs; leave out --root")
            return build_smoke_book(args.profile, args.smoke, build=not args.no_build, only=args.only, jobs=args.jobs)
        return build_book(args.profile, runs_root=args.root, build=not args.no_build, only=args.only, jobs=args.jobs, train=not args.no_train, force=args.force)
    except _user_errors() as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mexit: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`mexit runs show KEY | head`): stop quietly, as head expects
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors reported in one line. Evaluated only when an exception reaches `main`, so the
    imports (torch among them) cost nothing to commands that need no torch, like `mexit runs list`."""
    from mexit.book import NotebookError
    from mexit.checkpoint import CorruptCheckpointError
    from mexit.pipeline import RunMissing
    from mexit.train import TrainingDiverged

    return (ValueError, KeyError, FileNotFoundError, CorruptCheckpointError, NotebookError, TrainingDiverged, RunMissing)


def _train(args: argparse.Namespace) -> int:
    from mexit.pipeline import train_or_load
    from mexit.store import RunStore

    # --regimes and --seeds take several values, so overrides written after them land there too.
    overrides = list(args.overrides)
    regimes = _take_overrides(args.regimes, overrides)
    seed_words = _take_overrides(args.seeds, overrides)
    for word in seed_words or []:
        if not word.isdigit():
            raise ValueError(f"--seeds takes non-negative integers, got {word!r}")
    base = load_config(args.config, overrides)
    regimes = regimes or [base.train.regime]
    seeds = [int(word) for word in seed_words] if seed_words else [base.train.seed]
    configs = regime_configs(base, regimes, seeds) if (args.regimes or args.seeds) else [base]
    for config in configs:  # every config is checked before any training starts
        config.validate()
    if args.dry_run:
        for config in configs:
            _show_plan(config)
        return 0
    store = RunStore(args.root)
    for config in configs:
        started = time.perf_counter()
        label = f"{config.train.regime if config.train.phases is None else '+'.join(config.train.phases)} s{config.train.seed} "
        run = train_or_load(store, config, device=args.device, progress_label=label)
        if os.environ.get("RANK", "0") != "0":
            continue
        acc = run.metrics["test_acc"]
        print(
            f"{run.key}  {label.strip():<14} test acc final {acc[-1]:.2f}%  best exit {max(acc):.2f}%  "
            f"train {sum(run.metrics['phase_wall_time_s']):.1f}s  (this call {time.perf_counter() - started:.1f}s)"
        )
    return 0


def _show_plan(config: RunConfig) -> None:
    """A run's key, its resolved config and, per phase, what trains and how (nothing is trained)."""
    import yaml

    from mexit import data
    from mexit.models import build_model
    from mexit.store import phase_keys
    from mexit.train import phase_plan

    shape = data.input_shape(config.data)
    model = build_model(config, shape, data.STANDARD_CLASSES[config.data.name])
    print(f"run {config.key()}: {model.num_exits} exits (ICs after blocks {list(model.placement)}), input {list(shape)}")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip())
    for key, settings in zip(phase_keys(config), phase_plan(config.train, config.model.method, model.num_exits)):
        print(f"phase {settings.pop('phase')} (phase key {key}):")
        width = max(map(len, settings))
        print("\n".join(f"  {name:<{width}}  {value}" for name, value in settings.items()))
    print()


def _smoke_data(args: argparse.Namespace) -> int:
    from mexit.data.generated import REAL_CLASSES, write_all

    roots = write_all(args.directory, train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    for name, root in roots.items():
        print(f"{name}: {REAL_CLASSES[name]} classes x ({args.train_per_class} train + {args.test_per_class} test) in {root}"
              f"  (data.data_root={root})")
    return 0


def _take_overrides(values: list[str] | None, overrides: list[str]) -> list[str] | None:
    """Move ``key=value`` words out of ``values`` into ``overrides``; returns the rest."""
    if values is None:
        return None
    overrides.extend(word for word in values if "=" in word)
    return [word for word in values if "=" not in word]


def _runs_root(args: argparse.Namespace) -> Path:
    from mexit.store import default_root

    return Path(args.root) if args.root else default_root()


def _plan(args: argparse.Namespace) -> int:
    from mexit import sweep, throughput

    runs_root = _runs_root(args)
    runs = sweep.plan(args.profile, Path.cwd(), runs_root)
    if not runs:
        print(f"profile {args.profile} needs no runs")
        return 0
    path = Path(args.throughput) if args.throughput else throughput.default_path(runs_root)
    rates = throughput.load(path)
    if args.throughput and rates is None:
        raise FileNotFoundError(f"--throughput: no file at {path}")
    table = sweep.plan_table(runs, runs_root, throughput=rates)
    shown = table.assign(train_macs=table["train_macs"].map("{:.2e}".format))
    if rates is not None:
        shown = shown.assign(gpu_hours=table["gpu_hours"].map("{:.1f}".format))
    print(shown.to_string(index=False))
    phases = {key for run in runs for key in run.phase_keys}
    print(
        f"{len(runs)} runs ({int(table['stored'].sum())} stored), {len(phases)} phases to train, "
        f"{len(sweep.groups(runs))} groups sharing no phase; estimated training cost {sweep.total_train_macs(runs):.2e} "
        "forward MACs at the epoch caps (each shared phase once; early stopping may end phases sooner)"
    )
    if rates is None:
        print(f"no throughput file at {path}: on the GPU node, 'python benchmarks/paper_throughput.py --write {path}' "
              "measures one, and this plan then gives GPU-hours per row")
        return 0
    hours, unmeasured = sweep.total_gpu_hours(runs, rates)
    per_row = table.groupby("row", sort=False)["gpu_hours"].sum(min_count=1)
    print(f"estimated {rates.device}-hours per row at the epoch caps (each run's phases in full; measured rates from {path}):")
    print("\n".join(f"  {row}: {value:.1f}" for row, value in per_row.items()))
    print(f"estimated total: {hours:.1f} {rates.device}-hours (each shared phase once)"
          + (f"; not measured, left out: {', '.join(unmeasured)}" if unmeasured else ""))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mexit import sweep

    runs_root, root = _runs_root(args), Path.cwd()
    options = sweep.JobOptions(
        partition=args.partition, gpus_per_node=args.gpus_per_node, nodes=args.nodes, time_min=args.time,
        threads=args.threads, jobs=args.jobs, max_parallel=args.max_parallel,
    )
    if args.status:
        table = sweep.status(args.profile, root, runs_root)
        print(table.to_string(index=False) if len(table) else f"profile {args.profile} needs no runs")
        print(sweep.state_counts(table))
        if (table["state"] == "failed").any():
            kind, options = sweep.last_submission(args.profile, runs_root) or (args.executor, options)
            jobs = sweep.submit(args.profile, root, runs_root, kind, options, states=("failed",))
            print(f"resubmitted {len(jobs)} job(s) ({kind}, as last submitted) for the failed runs; they resume from their checkpoints")
        return 0
    jobs = sweep.submit(args.profile, root, runs_root, args.executor, options, dry_run=args.dry_run)
    for job in jobs:
        if "sbatch" in job:
            print(f"--- the job array's sbatch script ---\n{job['sbatch']}")
        else:
            what = "would submit" if args.dry_run else f"job {job['job_id']}"
            print(f"{what}: {len(job['runs'])} run(s) {' '.join(job['runs'])}")
    print(f"{'would submit' if args.dry_run else 'submitted'} {sum('runs' in job for job in jobs)} job(s) through {args.executor}"
          + ("" if jobs else ": every run is done, pending or running"))
    if args.wait and not args.dry_run:
        table = sweep.wait(args.profile, root, runs_root)
        while (table["state"] == "done").all():  # runs planned once others are stored (the IC-design page's retrained placements)
            more = sweep.submit(args.profile, root, runs_root, args.executor, options)
            if not more:
                break
            print(f"submitted {len(more)} more job(s): runs the plan lists once the first are stored")
            table = sweep.wait(args.profile, root, runs_root)
        print(sweep.state_counts(table))
        return 0 if (table["state"] == "done").all() else 1
    return 0


def _check_store(store: Any) -> int:
    """``mexit runs check``: the runs and tables of ``store`` made by code other than today's (never read by a page)."""
    from mexit.stale import stale_runs, stale_tables

    runs, tables = stale_runs(store), stale_tables(store)
    print(f"runs: {int(runs['current'].sum())} of {len(runs)} made by today's code and settings; "
          f"analysis tables: {int(tables['current'].sum())} of {len(tables)}")
    for key in runs.loc[~runs["current"], "key"]:
        print(f"  stale run {key} (today's code keys its config anew: 'mexit runs remove {key}' frees it)")
    for row in tables[~tables["current"]].itertuples():
        print(f"  stale table {row.path} (made by other code of {row.code or 'an unrecorded module'})")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from mexit.store import Run, RunStore, run_problem

    store = RunStore(args.root)
    if args.action == "check":
        return _check_store(store)
    if args.action == "list":
        table = store.table()
        print(table.to_string(index=False) if len(table) else f"no runs in {store.root}")
        return 0
    if not args.key:
        raise ValueError(f"'mexit runs {args.action}' needs a run key")
    if args.action == "show":
        run_dir = store.find(args.key)
        problem = run_problem(run_dir)
        if problem is not None:
            print(f"run {run_dir.name} is {problem}: it has no results to show "
                  f"('mexit train' with its config resumes it, 'mexit runs remove {run_dir.name}' deletes it)")
            return 1
        run = Run(run_dir)
        print(json.dumps({"key": run.key, "config": run.config.to_dict(), "metrics": run.metrics, "costs": run.costs}, indent=2))
        return 0
    for path in store.remove(args.key):
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
