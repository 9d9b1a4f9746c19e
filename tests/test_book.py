"""The book: profiles, notebook execution and its errors, the tiny book built and opened in Chromium.

The tiny book is built in a copy of the book's sources (never over a user's ``_build``); the
screenshots of every page land in ``_build/screenshots`` of the repository.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
import torch
import yaml

from mexit.pipeline import train_or_load
from mexit.book import GENERATED_DIR, SUMMARY_PAGE, TEST_OUTPUT_DIR, NotebookError, build_book, copy_sources, execute_notebooks
from mexit.config import ParameterError
from mexit.plan import check_page, declared_defaults, declared_parameters, load_profile, needed_runs, notebook_names, notebook_parameters, parameters_cell
from mexit.store import phase_keys
from mexit.claims import VERDICTS
from mexit.verdicts import read_records, verdict_summary

from browser import CHROMIUM, check_pages

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = tuple(sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")))


def test_profiles_give_global_and_per_notebook_parameters() -> None:
    profile = load_profile("quick")
    table1 = notebook_parameters(profile, "table1")
    assert table1["budgets"] == [0.25, 0.5, 0.75, 1.0] and len(table1["seeds"]) == 5  # verdicts that survive fresh seeds
    assert len(table1["fresh_seeds"]) == 5 and not set(table1["fresh_seeds"]) & set(table1["seeds"])
    assert len({row["config"] for row in table1["rows"]}) >= 2  # two backbone families
    assert "budgets" not in notebook_parameters(profile, "training_cost")
    assert len(notebook_parameters(load_profile("paper"), "table1")["rows"]) == 6
    with pytest.raises(ValueError, match="unknown profile 'huge'; allowed: .*quick"):
        load_profile("huge")


def test_a_profile_can_be_a_yaml_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("global_params: {seeds: [3]}\nnotebooks: {table1: {seeds: [4, 5]}}\n")
    profile = load_profile(str(mine))
    assert notebook_parameters(profile, "table1")["seeds"] == [4, 5]
    assert notebook_parameters(profile, "training_cost")["seeds"] == [3]
    (tmp_path / "bad.yaml").write_text("config: tiny\nseeds: [0]\n")
    with pytest.raises(ValueError, match="global_params and notebooks"):
        load_profile(str(tmp_path / "bad.yaml"))


def test_every_notebook_declares_the_shared_parameters() -> None:
    for name in NOTEBOOKS:
        if name == SUMMARY_PAGE:  # it reads the other pages' claims, not runs
            continue
        declared = parameters_cell(ROOT / "notebooks" / f"{name}.ipynb")
        assert {"rows", "seeds", "regimes", "runs_root"} <= set(declared), name
        source = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert all(not cell.get("outputs") for cell in source.cells if cell.cell_type == "code"), f"{name} has outputs"


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"seeds": []}, "seeds"),
        ({"regimes": ["joint", "hybrid"]}, "regimes"),
        ({"budgets": [0.5, 2.0]}, "budgets"),
        ({"rows": [{"label": "x", "config": "tiny", "overrides": ["model.backbone=resnet7"]}]}, "rows[0]"),
        ({"rows": [{"label": "x", "config": "cifar-huge"}]}, "rows[0]"),
        ({"seeds": "0, 1"}, "seeds"),
    ],
)
def test_a_bad_table1_parameter_is_refused_by_its_name(parameters: dict, named: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    defaults = declared_defaults(parameters_cell(ROOT / "notebooks" / "table1.ipynb"))
    with pytest.raises(ParameterError) as raised:
        check_page({**defaults, "runs_root": str(store), **parameters})
    assert str(raised.value).startswith(named)
    assert not store.exists()


def test_a_bad_parameter_stops_the_notebook_at_its_first_cell(tmp_path: Path) -> None:
    """Through papermill: the error is the notebook's first own cell's, before anything is stored."""
    store = tmp_path / "store"
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "table1.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False, kernel_name="python3",
            parameters={"runs_root": str(store), "rows": [{"label": "x", "config": "tiny", "overrides": ["model.backbone=resnet7"]}]},
        )
    assert raised.value.ename == "ParameterError" and raised.value.evalue.startswith("rows[0]")
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    failed = [i for i, cell in enumerate(code) if any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    assert failed == [2]  # defaults, injected parameters, then the first cell of the notebook's own
    assert not store.exists()


def test_a_failing_notebook_is_named_with_its_cell(tmp_path: Path) -> None:
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("seeds = [0]")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "notebooks" / "broken.ipynb")
    with pytest.raises(NotebookError, match=r"notebook broken failed in cell 4: RuntimeError: boom"):
        execute_notebooks("tiny", tmp_path, runs_root=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="unknown notebook.*'table2'.*allowed: broken"):
        execute_notebooks("tiny", tmp_path, only=["table2"])


TEST_RUNS = Path(os.environ["MEXIT_RUNS"])  # the session's store (tests/conftest.py), shared with the nbval tests


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny book, its runs trained first by `mexit sweep` through submitit's local executor (two
    processes of one thread) into the session's store, where the nbval tests read the same runs: the
    book step then only reads the store. Its notebooks start as the executed test outputs
    (``tests/notebooks``, made by the same code at the same profile): the book reuses each whose
    identity (source, parameters, code, runs) still matches and executes the others, so that nbval
    and the book do not execute the same notebook twice. The warm-rebuild test below executes pages
    through the book itself."""
    root = copy_sources(ROOT, tmp_path_factory.mktemp("book"))
    shutil.copytree(ROOT / TEST_OUTPUT_DIR, root / GENERATED_DIR)
    swept = subprocess.run(
        [sys.executable, "-m", "mexit", "sweep", "--profile", "tiny", "--executor", "local", "--wait", "--root", str(TEST_RUNS)],
        cwd=root, capture_output=True, text=True,
    )
    assert swept.returncode == 0 and "0 pending, 0 running, 0 failed, 0 not submitted" in swept.stdout, swept.stdout + swept.stderr
    planned = needed_runs(load_profile("tiny"), declared_parameters(root, notebook_names(root)), TEST_RUNS)
    folders = [TEST_RUNS / "runs" / key for key in planned] + [TEST_RUNS / "phases" / p for _, c in planned.values() for p in phase_keys(c)]
    trained = {path: path.stat().st_mtime_ns for folder in folders for path in folder.rglob("*")}  # the tiny runs' files only: other tests share the store
    assert build_book("tiny", root=root, runs_root=str(TEST_RUNS), train=False) == 0  # every run a page reads was planned
    after = {path: path.stat().st_mtime_ns for folder in folders for path in folder.rglob("*")}
    assert after == trained, "the book step trained or rewrote runs the sweep had stored"
    return root


def test_the_tiny_book_shows_every_page_whole_in_a_browser(tiny_book: Path) -> None:
    if CHROMIUM is None:  # make test installs it where it can; CI requires it
        message = "no Chromium to open the book in: install Debian's chromium, or name one in $MEXIT_CHROMIUM"
        if os.environ.get("MEXIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    screenshots = ROOT / "_build" / "screenshots"
    reports = {r.page: r for r in check_pages(tiny_book / "_build" / "html", screenshots)}
    problems = {page: r.problems for page, r in reports.items() if r.problems}
    assert not problems
    for name in NOTEBOOKS:
        assert reports[f"book/generated/{name}.html"].figures >= 1, f"{name} shows no figure"
    assert reports["book/analyses.html"].math > 10  # formulas typeset by MathJax, served locally
    status = reports["book/status.html"].text
    assert sum(status.count(verdict) for verdict in VERDICTS) >= 5
    summary = verdict_summary(read_records(tiny_book / "book" / "generated" / "records"))
    for page in ("book/status.html", "book/intro.html"):  # both open on the verdict matrix (loaded: no broken image above) and its count
        assert reports[page].images >= 1, f"{page} shows no verdict matrix"
        assert summary in " ".join(reports[page].text.split()), f"{page} lacks the verdicts' summary"
    assert re.search(r"\d+ verdicts on \d+ claims over \d+ rows of the profile \(a trend across sizes counts as one\): \d+ held", summary)
    assert len(list(screenshots.glob("*.png"))) >= len(reports)


def test_the_pages_name_no_folder_of_the_machine_that_built_them(tiny_book: Path) -> None:
    """The store reaches the notebooks as $MEXIT_RUNS: a page shows the parameters a reader can
    reuse (``runs_root = None``), not the builder's run store."""
    pages = list((tiny_book / "_build" / "html" / "book" / "generated").glob("*.html"))
    assert len(pages) == len(NOTEBOOKS)
    for page in pages:
        text = page.read_text()
        assert str(tiny_book) not in text and str(TEST_RUNS) not in text, f"{page.name} names a folder of the machine that built it"


def test_the_built_book_needs_no_network(tiny_book: Path) -> None:
    html = tiny_book / "_build" / "html"
    loads = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(https?://[^\"]+)\"")
    for page in html.rglob("*.html"):
        external = [url for url in loads.findall(page.read_text()) if "127.0.0.1" not in url]
        assert not external, f"{page} loads {external}"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()


def test_glued_numbers_reach_the_pages(tiny_book: Path) -> None:
    executed = nbformat.read(tiny_book / "book" / "generated" / "table1.ipynb", as_version=4)
    glued = {
        key
        for cell in executed.cells
        for output in cell.get("outputs", [])
        for key in [output.get("metadata", {}).get("scrapbook", {}).get("name")]
        if key
    }
    assert {"claims", "mixed_minus_joint_100", "n_rows", "n_seeds"} <= glued
    page = (tiny_book / "_build" / "html" / "book" / "generated" / "table1.html").read_text()
    assert "{glue" not in page


def test_runs_trained_in_two_processes_are_those_one_process_trains(tmp_path: Path) -> None:
    """``mexit book --jobs 2``: the needed runs, dealt over two single-threaded processes in groups
    that share no phase, are stored once each, with the same logits as when trained in this process."""
    from mexit.book import train_needed
    from mexit.plan import declared_parameters, needed_runs
    from mexit.store import RunStore

    profile = {"global_params": {"rows": [{"label": "tiny", "config": "tiny"}], "seeds": [0], "regimes": ["disjoint", "joint", "mixed"]},
               "notebooks": {}}
    declared = declared_parameters(ROOT, ["training_cost"])
    train_needed(profile, declared, tmp_path / "two", jobs=2)
    train_needed(profile, declared, tmp_path / "one", jobs=1)
    needed = needed_runs(profile, declared, tmp_path / "one")
    assert len(needed) == 3 and len(list((tmp_path / "two" / "phases").iterdir())) == 4  # P1 shared by disjoint and mixed
    for _, config in needed.values():
        two, one = train_or_load(RunStore(tmp_path / "two"), config), train_or_load(RunStore(tmp_path / "one"), config)
        assert torch.equal(two.logits("test"), one.logits("test"))
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        train_needed(profile, declared, tmp_path / "one", jobs=0)


def test_a_run_failing_in_a_training_process_is_raised_with_its_reason_and_no_further_group_starts(tmp_path: Path) -> None:
    """The groups queue in plan order (equal estimates): the two diverging runs are handed out
    first, fail, and their error is raised before any of the runs queued behind them starts."""
    from mexit.book import train_needed
    from mexit.plan import declared_parameters

    rows = [{"label": "diverges", "config": "tiny", "overrides": ["train.optim.lr=1e30"]}, {"label": "fine", "config": "tiny"}]
    profile = {"global_params": {"rows": rows, "seeds": [0, 1], "regimes": ["joint"]}, "notebooks": {}}
    with pytest.raises(Exception, match=r"lower train.optim.lr"):
        train_needed(profile, declared_parameters(ROOT, ["training_cost"]), tmp_path, jobs=2)
    assert not list((tmp_path / "runs").glob("*/metrics.json"))  # nothing stored as finished, the fine row's runs not started


def test_a_warm_rebuild_reuses_unchanged_notebooks_and_rebuilds_the_pages_citing_a_re_executed_one(tiny_book: Path) -> None:
    from mexit.book import render

    store = str(TEST_RUNS)
    again = execute_notebooks("tiny", tiny_book, runs_root=store, train=False)
    assert all(run.reused for run in again) and len(again) == len(NOTEBOOKS)
    status_source, status_page = tiny_book / "book" / "status.md", tiny_book / "_build" / "html" / "book" / "status.html"
    before = status_page.stat().st_mtime_ns
    redone = execute_notebooks("tiny", tiny_book, runs_root=store, only=["training_cost"], train=False)
    assert [(run.name, run.reused) for run in redone] == [("training_cost", False), (SUMMARY_PAGE, True)]  # the same claims recorded
    assert status_source.stat().st_mtime_ns > before  # it pastes the training-cost page's verdicts: marked changed
    assert render(tiny_book) == 0
    assert status_page.stat().st_mtime_ns > before, "the status page was not rebuilt after a notebook it cites was re-executed"

    # A changed result: the exit-rules page under one rule decides fewer claims. Its record changes,
    # so the verdict matrix is drawn again, and the status page shows the new count.
    one_rule = tiny_book / "one_rule.yaml"
    profile = load_profile("tiny")
    profile["notebooks"]["exit_rules"] = {**profile["notebooks"]["exit_rules"], "rules": ["maxprob"]}
    one_rule.write_text(yaml.safe_dump(profile))
    records = tiny_book / "book" / "generated" / "records"
    before_summary, before_lines = verdict_summary(read_records(records)), len(read_records(records))
    changed = execute_notebooks(str(one_rule), tiny_book, runs_root=store, only=["exit_rules"], train=False)
    assert [(run.name, run.reused) for run in changed] == [("exit_rules", False), (SUMMARY_PAGE, False)]
    after_summary = verdict_summary(read_records(records))
    assert len(read_records(records)) < before_lines and after_summary != before_summary
    assert render(tiny_book) == 0
    shown = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", status_page.read_text())).split())
    assert after_summary in shown and before_summary not in shown


def test_no_train_names_the_missing_runs_before_any_notebook_executes(tmp_path: Path) -> None:
    root = copy_sources(ROOT, tmp_path / "book")
    with pytest.raises(ValueError, match=r"--no-train: \d+ of the \d+ runs the notebooks read are not in .*mexit sweep"):
        execute_notebooks("tiny", root, runs_root=str(tmp_path / "empty"), train=False)
    assert not (root / "book" / "generated").exists()


def test_a_notebooks_identity_follows_its_source_parameters_code_and_runs(tmp_path: Path) -> None:
    from mexit.book import notebook_identity

    source = ROOT / "notebooks" / "table1.ipynb"
    base = notebook_identity(source, {"seeds": [0, 1]}, ["a", "b"])
    assert notebook_identity(source, {"seeds": [0, 1]}, ["a", "b"]) == base
    other = notebook_identity(source, {"seeds": [0, 2]}, ["a", "b"])
    assert {part for part in base if base[part] != other[part]} == {"parameters"}
    rerun = notebook_identity(source, {"seeds": [0, 1]}, ["a", "c"])
    assert {part for part in base if base[part] != rerun[part]} == {"runs"}
    edited = tmp_path / "table1.ipynb"
    edited.write_text(source.read_text().replace("Table 1: accuracy", "Table 1 - accuracy"))
    assert {part for part in base if base[part] != notebook_identity(edited, {"seeds": [0, 1]}, ["a", "b"])[part]} == {"source"}


def test_a_notebooks_identity_follows_the_paper_numbers_it_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Table 1 reads the paper's numbers from mexit/reference/table1.csv, a data file no code
    fingerprint holds: a corrected number re-executes the pages whose code can read it."""
    from mexit import fingerprint
    from mexit.book import notebook_identity

    package = tmp_path / "mexit"
    shutil.copytree(fingerprint.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE", package)
    source = ROOT / "notebooks" / "table1.ipynb"
    before = notebook_identity(source, {}, [])
    assert notebook_identity(source, {}, []) == before
    csv = package / "reference" / "table1.csv"
    csv.write_text(csv.read_text() + "\n")
    after = notebook_identity(source, {}, [])
    assert {part for part in before if before[part] != after[part]} == {"data"}

