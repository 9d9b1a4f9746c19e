"""Build the book: train what the notebooks need, execute them with a profile's parameters, render.

Notebook sources live in ``notebooks/`` without outputs; executed copies land in ``book/generated/``,
and ``jupyter-book build -W .`` renders those that ``_toc.yml`` lists (as ``book/generated/<name>``)
with the prose of ``book/`` into ``_build/html``.

A profile (``mexit/profiles/<name>.yaml``) is only a set of parameter values, in the manner of
NCAR CUPiD's ``config.yml``: ``global_params`` go to every notebook, ``notebooks.<name>`` adds or
replaces values for one notebook. Each notebook receives only the parameters its ``parameters``
cell declares, plus ``profile`` (the profile's name, shown beside each verdict). The run store
reaches the notebooks as ``$MEXIT_RUNS`` while they execute, not as a parameter: a rendered page
shows the parameters a reader can reuse, not a folder of the machine that built it.
"""

from __future__ import annotations

import ast
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mexit.pipeline import NO_TRAIN_VARIABLE
from mexit.verdicts import PAGE_VARIABLE, RECORDS_VARIABLE
from mexit.plan import NOTEBOOK_DIR, declared_parameters, load_profile, notebook_names, notebook_parameters, runs_by_page, union_runs

GENERATED_DIR = Path("book") / "generated"
RECORDS_DIR = "records"
"""Where, beside the executed notebooks, each page records its claims (:mod:`mexit.verdicts`)."""
SUMMARY_PAGE = "verdicts"
"""The page that reads every other page's claims (the verdict matrix): executed after all of them,
and again whenever their records change."""
TEST_OUTPUT_DIR = Path("tests") / "notebooks"
BOOK_SOURCES: tuple[str, ...] = ("_config.yml", "_toc.yml", "_static", "book", "notebooks")


class NotebookError(RuntimeError):
    """A notebook failed: names the notebook, its failing cell and the error."""


@dataclass(frozen=True)
class Executed:
    """One executed notebook: where its output lies, how long it took, and whether an earlier
    execution was reused (its identity unchanged: :func:`notebook_identity`)."""

    name: str
    path: Path
    seconds: float
    reused: bool = False


def copy_sources(root: Path, target: Path) -> Path:
    """Copy what a build reads (:data:`BOOK_SOURCES`, without executed notebooks or hidden files)
    from ``root`` to ``target``: a scratch book that builds without touching ``root``'s ``_build``.
    Into an existing ``target``, the sources are replaced and its executed notebooks kept."""
    for name in BOOK_SOURCES:
        source, destination = root / name, target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("generated", ".*"), dirs_exist_ok=True)
        else:
            shutil.copy(source, destination)
    return target


def profile_label(name: str) -> str:
    """How a page names its profile: a shipped profile's name, or a profile file's stem (never a
    folder of the machine that built the book)."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def train_needed(
    profile: Mapping[str, Any], declared: Mapping[str, Any], runs_root: Path, jobs: int = 1
) -> dict[str, dict[str, tuple[str, Any]]]:
    """Train (or find stored) every run the notebooks compare (:func:`needed_runs`), once, before
    any notebook executes, so that progress shows on the terminal and a shared phase is trained once.

    ``jobs`` > 1 trains in that many processes of one thread each: the runs that share a phase form
    one group (:func:`mexit.sweep.groups`), and each process takes the next group, the costliest
    first, when it finishes one (:func:`_train_in_processes`). On a 2-core CPU two single-threaded
    processes do about 1.3x the work of one process on two threads.

    A page whose runs depend on what other runs show (the IC-design page retrains the placements
    chosen on its dense runs) plans them once those are stored: after a round that trained
    anything, the notebooks are planned again and the new runs trained, until a plan adds none.
    Returns every notebook's runs (:func:`mexit.plan.runs_by_page`) as last planned."""
    by_page = runs_by_page(profile, declared, runs_root)
    trained = _train_runs(union_runs(by_page), runs_root, jobs)
    while trained:
        again = runs_by_page(profile, declared, runs_root)
        if set(union_runs(again)) <= set(union_runs(by_page)):
            break
        by_page = again
        trained = _train_runs(union_runs(by_page), runs_root, jobs)
    return by_page


def _train_runs(needed: Mapping[str, tuple[str, Any]], runs_root: Path, jobs: int) -> int:
    """Train the runs of ``needed`` (:func:`mexit.plan.needed_runs`) that ``runs_root`` lacks, in ``jobs`` processes; how many it trained."""
    from mexit.pipeline import train_or_load
    from mexit.store import RunStore

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    stored = sum((runs_root / "runs" / key / "metrics.json").exists() for key in needed)
    print(f"runs: {len(needed)} needed, {stored} stored, {len(needed) - stored} to train", file=sys.stderr, flush=True)
    if stored == len(needed):
        return 0
    started = time.perf_counter()
    if jobs == 1:
        store = RunStore(runs_root)
        for label, config in needed.values():
            train_or_load(store, config, progress_label=label)
    else:
        _train_in_processes(needed, runs_root, jobs)
    print(f"runs ready in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    return len(needed) - stored


def _train_in_processes(needed: Mapping[str, tuple[str, Any]], runs_root: Path, jobs: int) -> None:
    """Train the groups of runs that share no phase (:func:`mexit.sweep.groups`) in ``jobs``
    processes that each take the next group when they finish one, the costliest first by estimate:
    no process idles while groups wait, however far early stopping moves a run's length from its
    estimate (groups dealt out in advance left one core idle while the other finished its share).
    At most ``jobs`` groups are handed out at a time, so after a failing run no further group
    starts: its error is raised once the groups already training finish."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    from mexit.store import phase_keys
    from mexit.sweep import PlannedRun, groups, total_train_macs

    planned = [PlannedRun(key, label, config, tuple(phase_keys(config))) for key, (label, config) in needed.items()]
    ordered = sorted(groups(planned), key=total_train_macs, reverse=True)
    queue = iter(ordered)
    with ProcessPoolExecutor(min(jobs, len(ordered)), mp_context=multiprocessing.get_context("spawn")) as pool:

        def hand_out(count: int) -> set[Future[None]]:
            handed = set()
            for group in itertools.islice(queue, count):
                handed.add(pool.submit(_train_batch, str(runs_root), [(run.label, run.config.to_dict()) for run in group]))
            return handed

        training = hand_out(jobs)
        while training:
            done, training = wait(training, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # a failed run's error, raised here: no further group is handed out
            training |= hand_out(len(done))


def _train_batch(runs_root: str, runs: list[tuple[str, dict[str, Any]]]) -> None:
    """One group's runs (they share phases), in order, on one thread of a training process."""
    import torch

    from mexit.config import RunConfig
    from mexit.pipeline import train_or_load
    from mexit.store import RunStore

    torch.set_num_threads(1)
    store = RunStore(runs_root)
    for label, config in runs:
        train_or_load(store, RunConfig.from_dict(config), progress_label=label)


def execute_notebooks(
    profile_name: str, root: Path, runs_root: str | None = None, only: Sequence[str] | None = None, jobs: int = 1,
    train: bool = True, force: bool = False,
) -> list[Executed]:
    """Execute the notebooks (all, or ``only`` these names) with the profile's parameters into
    ``book/generated/``, after training every run they read (in ``jobs`` processes; with ``train``
    False, after checking that the store holds them all, :func:`check_stored`). The notebooks never
    train: a page that reads a run the plan does not list stops with :class:`mexit.pipeline.RunMissing`.
    A notebook whose identity (:func:`notebook_identity`) is that of its executed copy is reused,
    unless ``force`` or it is named in ``only``.

    Raises :class:`NotebookError` naming the notebook, its failing cell and the error.
    """
    from mexit.store import default_root

    store = (root / (runs_root or default_root())).resolve()
    return _execute(load_profile(profile_name), profile_label(profile_name), root, root / GENERATED_DIR, store, only, jobs=jobs, train=train, force=force)


def write_test_outputs(root: Path | None = None) -> list[Executed]:
    """Execute every notebook at the ``tiny`` profile into ``tests/notebooks/``: the outputs nbval
    compares (``make test-outputs``)."""
    from mexit.store import default_root

    root = (root or Path.cwd()).resolve()
    store = (root / default_root()).resolve()
    return _execute(load_profile("tiny"), "tiny", root, root / TEST_OUTPUT_DIR, store, None, force=True)


def _execute(
    profile: Mapping[str, Any],
    profile_name: str,
    root: Path,
    into: Path,
    store: Path,
    only: Sequence[str] | None,
    jobs: int = 1,
    train: bool = True,
    force: bool = False,
) -> list[Executed]:
    available = notebook_names(root)
    names = list(only) if only else available
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; allowed: {', '.join(available)}")
    summary = [SUMMARY_PAGE] if SUMMARY_PAGE in available else []  # executed last: it reads the others' records
    declared = declared_parameters(root, sorted({*names, *summary}))
    if train:
        by_page = train_needed(profile, declared, store, jobs)
    else:
        by_page = runs_by_page(profile, declared, store)
        check_stored(by_page, store)
    done = []
    records = into / RECORDS_DIR
    with _environment({"MEXIT_RUNS": str(store), NO_TRAIN_VARIABLE: "1", RECORDS_VARIABLE: str(records)}):
        for name in [n for n in names if n != SUMMARY_PAGE] + summary:
            values = {**notebook_parameters(profile, name), "profile": profile_name}
            parameters = {key: value for key, value in values.items() if key in declared.get(name, {})}
            identity = notebook_identity(root / NOTEBOOK_DIR / f"{name}.ipynb", parameters, sorted(by_page.get(name, {})))
            if name == SUMMARY_PAGE:
                identity["records"] = _records_identity(records)
            with _environment({PAGE_VARIABLE: name}):
                done.append(_execute_one(root, into, name, parameters, identity, force=(force or bool(only)) and name in names))
    refresh_citing_pages(root, [run.name for run in done if not run.reused])
    return done


def _records_identity(records: Path) -> str:
    """The claims every page recorded (:mod:`mexit.verdicts`), hashed: what the summary page reads."""
    from mexit.config import stable_hash

    return stable_hash({path.name: path.read_text() for path in sorted(records.glob("*.csv"))})


def notebook_identity(source: Path, parameters: Mapping[str, Any], run_keys: Sequence[str]) -> dict[str, str]:
    """What an executed notebook depends on, each part hashed: its ``source``, the ``parameters``
    injected, the ``code`` of every ``mexit`` module it imports and what they import
    (:func:`mexit.fingerprint.code_fingerprint`, found from its code cells' imports) and the keys of
    the ``runs`` it reads (which hold the training code and settings; the analyses' cached tables
    are keyed by those keys, its parameters and the same code), and the ``data`` files shipped in
    the packages of that code (:func:`package_data`: the paper's numbers). Equal identities: the
    same page."""
    import json

    from mexit.config import stable_hash
    from mexit.fingerprint import closure, code_fingerprint, imported

    text = source.read_text()
    roots: set[str] = set()
    for cell in json.loads(text)["cells"]:
        if cell["cell_type"] == "code":
            try:
                roots.update(target for _, target in imported(ast.parse("".join(cell["source"]))))
            except SyntaxError:  # a cell with IPython magics: its imports are in other cells
                continue
    return {
        "source": stable_hash(text),
        "parameters": stable_hash(dict(parameters)),
        "code": code_fingerprint(tuple(sorted(roots))),
        "data": stable_hash(package_data(closure(tuple(sorted(roots))))),
        "runs": stable_hash(list(run_keys)),
    }


def package_data(modules: Sequence[str]) -> dict[str, str]:
    """The sha256 of each data file shipped in a package of ``modules`` (every file but Python
    beside the package's ``__init__.py``, such as :mod:`mexit.reference`'s ``table1.csv``), by its
    path in the package: what the code reads besides itself, which its fingerprint leaves out."""
    import hashlib

    from mexit.fingerprint import PACKAGE, module_path

    hashes = {}
    for module in modules:
        path = module_path(module)
        if path is None or path.name != "__init__.py":
            continue
        for data in sorted(p for p in path.parent.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")):
            hashes[data.relative_to(PACKAGE).as_posix()] = hashlib.sha256(data.read_bytes()).hexdigest()
    return hashes


def _stored_identity(target: Path) -> dict[str, str] | None:
    """The identity an executed notebook was made with (None: not executed, or by an older book)."""
    import json

    try:
        return json.loads(target.read_text())["metadata"]["mexit"]["identity"]
    except (OSError, ValueError, KeyError):
        return None


def refresh_citing_pages(root: Path, executed: Sequence[str]) -> list[Path]:
    """Mark as changed (their modification time now) the prose pages that paste glued values from
    any of the ``executed`` notebooks, so that the next render rebuilds them: a page whose source
    did not change but whose glued numbers did is never left stale. Returns the pages touched."""
    if not executed:
        return []
    cited = [f"generated/{name}.ipynb" for name in executed]
    pages = [page for page in sorted((root / "book").glob("*.md")) if any(c in page.read_text() for c in cited)]
    for page in pages:
        page.touch()
    return pages


def check_stored(by_page: Mapping[str, Mapping[str, tuple[str, Any]]], runs_root: Path) -> None:
    """Raise a ValueError naming every run the notebooks read (``by_page``, :func:`mexit.plan.runs_by_page`)
    that ``runs_root`` lacks, and the command that trains them (``mexit book --no-train``)."""
    needed = union_runs(by_page)
    missing = [label.strip() for key, (label, _) in needed.items() if not (runs_root / "runs" / key / "metrics.json").exists()]
    if missing:
        shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"--no-train: {len(missing)} of the {len(needed)} runs the notebooks read are not in {runs_root}: {shown}. "
            "Train them first with 'mexit sweep --profile PROFILE' (or 'mexit book' without --no-train)"
        )
    print(f"runs: {len(needed)} needed, all stored (--no-train)", file=sys.stderr, flush=True)


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """These environment variables set (for the notebooks' kernels: the run store as ``$MEXIT_RUNS``,
    training off, :data:`mexit.pipeline.NO_TRAIN_VARIABLE`), then set back."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _execute_one(root: Path, into: Path, name: str, parameters: Mapping[str, Any], identity: Mapping[str, str], force: bool) -> Executed:
    """Execute notebook ``name`` with ``parameters`` into ``into``, or reuse its executed copy when
    it was made with the same ``identity`` (:func:`notebook_identity`) and ``force`` is False; say which and why."""
    import logging

    import papermill

    # papermill reads the parameters cell again only to warn of undeclared parameters (mexit.plan
    # checks them first), and its reader warns on every line holding two "=" (an override list).
    logging.getLogger("papermill.translators").setLevel(logging.ERROR)
    source = root / NOTEBOOK_DIR / f"{name}.ipynb"
    target = into / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    before = _stored_identity(target)
    changed = [part for part in identity if before is None or before.get(part) != identity[part]]
    if not force and not changed:
        print(f"reused {name}: its source, parameters, code, data and runs are unchanged", file=sys.stderr, flush=True)
        return Executed(name, target, 0.0, reused=True)
    why = "forced" if force else ("never executed here" if before is None else f"its {', '.join(changed)} changed")
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(target), parameters=dict(parameters), cwd=str(root), progress_bar=False,
            kernel_name="python3", stderr_file=sys.stderr,  # the analyses' progress, on the terminal
        )
    except papermill.PapermillExecutionError as error:
        raise NotebookError(
            f"notebook {name} failed in cell {error.exec_count}: {error.ename}: {error.evalue} (executed copy: {target})"
        ) from None
    _record_identity(target, identity)
    seconds = time.perf_counter() - started
    print(f"executed {name} ({why}) in {seconds:.1f}s", file=sys.stderr, flush=True)
    return Executed(name, target, seconds)


def _record_identity(target: Path, identity: Mapping[str, str]) -> None:
    """Keep ``identity`` in the executed notebook's metadata, with when and on what machine it ran."""
    import datetime
    import json
    import platform

    notebook = json.loads(target.read_text())
    notebook["metadata"]["mexit"] = {
        "identity": dict(identity),
        "executed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'unknown processor'})",
    }
    from mexit.checkpoint import write_bytes_atomic

    write_bytes_atomic(target, (json.dumps(notebook, indent=1, ensure_ascii=False) + "\n").encode())


def build_book(
    profile: str,
    runs_root: str | None = None,
    build: bool = True,
    root: Path | None = None,
    only: Sequence[str] | None = None,
    jobs: int = 1,
    train: bool = True,
    force: bool = False,
) -> int:
    """Execute the notebooks (their runs trained in ``jobs`` processes first; ``train`` False: all
    must be stored already, as after ``mexit sweep``; unchanged notebooks reused unless ``force``),
    then ``jupyter-book build -W``; returns the build's exit status."""
    root = _book_root(root)
    started = time.perf_counter()
    execute_notebooks(profile, root, runs_root, only, jobs, train, force)
    return render(root, started) if build else 0


def build_smoke_book(
    profile: str,
    directory: str | Path,
    build: bool = True,
    root: Path | None = None,
    only: Sequence[str] | None = None,
    jobs: int = 1,
    seeds: Sequence[int] | None = None,
) -> int:
    """The smoke build of ``profile`` (:mod:`mexit.smoke`): the generated datasets in ``directory``
    (written where missing), its runs in ``directory/runs``, its book, every page under the smoke
    banner, in ``directory/book`` (``_build/html`` there). Nothing of ``root``'s book or store is
    touched. ``seeds`` replace the smoke's two (:data:`mexit.smoke.SMOKE_SEEDS`). Returns the build's exit status."""
    from mexit import smoke

    root = _book_root(root)
    directory = Path(directory).resolve()
    started = time.perf_counter()
    original = load_profile(profile)
    profile_values = smoke.smoke_profile(original, directory, seeds or smoke.SMOKE_SEEDS)
    read = smoke.for_pages(profile_values, only)
    smoke.ensure_weights(directory, smoke.pretrained_backbones(smoke.for_pages(original, only)))
    smoke.ensure_data(directory, smoke.datasets_read(read))
    smoke.ensure_ood_data(directory, smoke.ood_datasets_read(read))
    target = copy_sources(root, directory / "book")
    _add_banner(target / "_config.yml", smoke.banner(profile_label(profile)))
    _execute(profile_values, f"{profile_label(profile)} (smoke)", target, target / GENERATED_DIR, directory / "runs", only, jobs)
    return render(target, started) if build else 0


def render(root: Path, started: float | None = None) -> int:
    """``jupyter-book build -W`` of the book at ``root`` (every notebook executed); its exit status."""
    missing = [name for name in notebook_names(root) if not (root / GENERATED_DIR / f"{name}.ipynb").exists()]
    if missing:
        raise ValueError(f"notebooks {missing} were never executed; run 'mexit book' without --only once")
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", "-W", "--keep-going", str(root)]
    status = subprocess.call(command, cwd=root)
    if status == 0:
        took = "" if started is None else f" in {time.perf_counter() - started:.1f}s"
        print(f"book built{took}: {root / '_build' / 'html' / 'index.html'}")
    return status


def _book_root(root: Path | None) -> Path:
    root = (root or Path.cwd()).resolve()
    if not (root / "_config.yml").exists():
        raise FileNotFoundError(f"no _config.yml in {root}: run 'mexit book' from the repository root")
    return root


def _add_banner(config_path: Path, text: str) -> None:
    """Put ``text`` at the top of every page (the theme's announcement bar) and in the book's title."""
    import yaml

    config = yaml.safe_load(config_path.read_text())
    config["title"] = f"{config['title']} (smoke build)"
    options = config.setdefault("sphinx", {}).setdefault("config", {}).setdefault("html_theme_options", {})
    options["announcement"] = text
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
