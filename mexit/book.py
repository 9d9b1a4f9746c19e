"""Build the book: execute every notebook with a profile's parameters (papermill), then Jupyter Book.

Notebook sources live in ``notebooks/`` without outputs; executed copies land in ``book/generated/``,
and ``jupyter-book build -W .`` renders those that ``_toc.yml`` lists (as ``book/generated/<name>``)
with the prose of ``book/`` into ``_build/html``. A profile (``mexit/profiles/<name>.yaml``) is only a
set of parameter values.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mexit.config import load_profile

NOTEBOOK_DIR = Path("notebooks")
GENERATED_DIR = Path("book") / "generated"


def execute_notebooks(profile: str, root: Path, runs_root: str | None = None) -> list[Path]:
    """Run every ``notebooks/*.ipynb`` under ``root`` with the profile's parameters; returns the outputs."""
    import papermill

    parameters = dict(load_profile(profile))
    parameters["runs_root"] = str(Path(runs_root or os.environ.get("MEXIT_RUNS", root / "runs")).resolve())
    executed = []
    for source in sorted((root / NOTEBOOK_DIR).glob("*.ipynb")):
        target = root / GENERATED_DIR / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"executing {source} with profile {profile!r}", file=sys.stderr, flush=True)
        papermill.execute_notebook(str(source), str(target), parameters=parameters, cwd=str(root), progress_bar=False)
        executed.append(target)
    return executed


def build_book(profile: str, runs_root: str | None = None, build: bool = True, root: Path | None = None) -> int:
    """Execute the notebooks, then ``jupyter-book build -W``; returns the build's exit status."""
    root = (root or Path.cwd()).resolve()
    if not (root / "_config.yml").exists():
        raise FileNotFoundError(f"no _config.yml in {root}: run 'mexit book' from the repository root")
    execute_notebooks(profile, root, runs_root)
    if not build:
        return 0
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", "-W", "--keep-going", str(root)]
    status = subprocess.call(command, cwd=root)
    if status == 0:
        print(f"book built: {root / '_build' / 'html' / 'index.html'}")
    return status
