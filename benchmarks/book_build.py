"""Time the book build at a profile: cold (an empty run store) and warm (every run stored), in one run.

Goals (the book issue): at the quick profile on a 2-core CPU, cold at most 20 minutes for the
Table 1, FLOPs-accuracy and training-cost notebooks (45 for the whole book once the analysis and
ablation notebooks join) and warm at most 2 minutes. The cold build trains every run into a fresh
temporary store; the warm build then re-executes every notebook and re-renders the book on it. The
book is built in a copy of the sources, so the repository's own ``_build`` is left alone.

    python benchmarks/book_build.py --profile quick [--warm-only --runs PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mexit.book import copy_sources

ROOT = Path(__file__).resolve().parents[1]
GOALS_S = {"quick": {"cold": 20 * 60, "warm": 2 * 60}}


def build(profile: str, root: Path, runs: Path) -> float:
    command = [str(Path(sys.executable).with_name("mexit")), "--root", str(runs), "book", "--profile", profile]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--warm-only", action="store_true", help="skip the cold build; --runs must hold every run")
    parser.add_argument("--runs", type=Path, help="the run store to use (default: a fresh temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "book"
        copy_sources(ROOT, root)
        runs = args.runs or Path(scratch) / "runs"
        figures = {}
        if not args.warm_only:
            figures["cold"] = build(args.profile, root, runs)
        figures["warm"] = build(args.profile, root, runs)
    goals = GOALS_S.get(args.profile, {})
    for name, seconds in figures.items():
        goal = goals.get(name)
        against = f"  goal {goal / 60:.0f} min, ratio {seconds / goal:.2f}" if goal else ""
        print(f"{args.profile} book, {name}: {seconds / 60:.1f} min ({seconds:.0f} s){against}")


if __name__ == "__main__":
    main()
