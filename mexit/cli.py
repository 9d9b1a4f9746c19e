"""The ``mexit`` command: train runs, list/show/remove stored runs, build the book.

    mexit train --config mnist5k-quick --regimes disjoint joint mixed --seeds 0 1 2
    mexit train --config my.yaml train.epochs=30 model.placement=[2,4,6]
    mexit runs list | show KEY | remove KEY
    mexit book --profile quick [--only table1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from mexit.config import REGIMES, load_config, regime_configs, shipped_configs


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
    train.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. train.epochs=30")

    runs = commands.add_parser("runs", parents=[common], help="list, show or remove stored runs")
    runs.add_argument("action", choices=("list", "show", "remove"))
    runs.add_argument("key", nargs="?", help="a run key (or a unique prefix of one)")

    book = commands.add_parser("book", parents=[common], help="execute the notebooks at a profile and build the book")
    book.add_argument("--profile", default="quick")
    book.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="execute only these notebooks (names in notebooks/)")
    book.add_argument("--no-build", action="store_true", help="execute the notebooks only")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "runs":
            return _runs(args)
        from mexit.book import build_book

        return build_book(args.profile, runs_root=args.root, build=not args.no_build, only=args.only)
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
    from mexit.train import TrainingDiverged

    return (ValueError, KeyError, FileNotFoundError, CorruptCheckpointError, NotebookError, TrainingDiverged)


def _train(args: argparse.Namespace) -> int:
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
    store = RunStore(args.root)
    for config in configs:
        started = time.perf_counter()
        label = f"{config.train.regime if config.train.phases is None else '+'.join(config.train.phases)} s{config.train.seed} "
        run = store.get(config, device=args.device, progress_label=label)
        if os.environ.get("RANK", "0") != "0":
            continue
        acc = run.metrics["test_acc"]
        print(
            f"{run.key}  {label.strip():<14} test acc final {acc[-1]:.2f}%  best exit {max(acc):.2f}%  "
            f"train {sum(run.metrics['phase_wall_time_s']):.1f}s  (this call {time.perf_counter() - started:.1f}s)"
        )
    return 0


def _take_overrides(values: list[str] | None, overrides: list[str]) -> list[str] | None:
    """Move ``key=value`` words out of ``values`` into ``overrides``; returns the rest."""
    if values is None:
        return None
    overrides.extend(word for word in values if "=" in word)
    return [word for word in values if "=" not in word]


def _runs(args: argparse.Namespace) -> int:
    from mexit.store import Run, RunStore, run_problem

    store = RunStore(args.root)
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
