"""Every parameter of every notebook is checked before anything trains: a bad value stops the page
(and `mexit book`, which checks every page of a profile first) with one ParameterError naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
import yaml

from mexit.book import execute_notebooks
from mexit.config import ParameterError
from mexit.plan import check_page, declared_defaults, declared_parameters, load_profile, notebook_names, page_values, parameters_cell

ROOT = Path(__file__).resolve().parents[1]

BAD: dict[str, Any] = {
    "rows": [], "seeds": [-1], "regimes": ["fast"], "runs_root": 3, "profile": 3, "budgets": [1.5], "grid": "coarse",
    "variants": "conv", "pick": "first", "aggregate": "median", "ztw_final": "mean", "fresh_seeds": [0, 0],
    "equal_budget": 1, "p1_share": 1.5, "longer_schedule": 1, "samples": 1, "batch_size": 0, "repeats": 0, "bins": 0, "rules": ["maxprob", "oracle"],
    "corruptions": ["fog"], "severities": [6], "ood_sets": ["svhn"], "ood_root": "", "records": 3, "equilibrium": "yes",
    "equilibrium_seeds": [99], "timed_seeds": [99], "points": -3, "bn_batches": -1, "eval_samples": 1, "bezier_steps": -1,
    "bezier_lr": 0.0, "path_seed": 99, "plane_points": 1, "plane_bn_batches": -1, "plane_eval_samples": 1,
    "max_features": 0, "probe_dim": 0, "noise_ratio": 0.0, "eig_threshold": 1.0, "families": [["no such row", "nor this"]],
    "target_budgets": [0.5, 0.0],
}
"""A bad value of every notebook parameter."""

DECLARED = declared_parameters(ROOT, notebook_names(ROOT))
CASES = [(name, parameter) for name, declared in DECLARED.items() for parameter in declared]


def test_every_declared_parameter_has_a_bad_value_here() -> None:
    assert {parameter for _, parameter in CASES} <= set(BAD)


@pytest.mark.parametrize(("notebook", "parameter"), CASES)
def test_a_bad_value_of_any_parameter_is_refused_by_name_before_any_run_is_stored(notebook: str, parameter: str, tmp_path: Path) -> None:
    values = {**page_values(load_profile("tiny"), notebook, DECLARED[notebook]), "runs_root": str(tmp_path), parameter: BAD[parameter]}
    with pytest.raises(ParameterError, match=parameter):
        check_page(values)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "phases").exists()


def test_a_value_written_over_several_lines_is_declared_whole(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    source = 'seeds = [0, 1]\nvariants = [\n    {"label": "uniform", "overrides": []},  # the paper\'s reference\n    {"label": "linear", "overrides": []},\n]\nroot = None\n'
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})
    notebook.cells = [nbformat.v4.new_markdown_cell("# A page"), cell]
    path = tmp_path / "page.ipynb"
    nbformat.write(notebook, path)
    declared = parameters_cell(path)
    assert list(declared) == ["seeds", "variants", "root"]
    assert declared_defaults(declared)["variants"] == [{"label": "uniform", "overrides": []}, {"label": "linear", "overrides": []}]
    notebook.cells = [nbformat.v4.new_markdown_cell("# No parameters")]
    nbformat.write(notebook, path)
    with pytest.raises(ValueError, match="one cell tagged 'parameters'"):
        parameters_cell(path)


def test_every_notebooks_own_defaults_are_literals_its_checks_pass(tmp_path: Path) -> None:
    for notebook, declared in DECLARED.items():
        defaults = declared_defaults(declared)
        assert set(defaults) == set(declared), f"{notebook}: {sorted(set(declared) - set(defaults))} are not literals"
        check_page({**defaults, "runs_root": str(tmp_path)})


def test_the_tiny_profiles_values_pass(tmp_path: Path) -> None:
    for notebook, declared in DECLARED.items():
        check_page({**page_values(load_profile("tiny"), notebook, declared), "runs_root": str(tmp_path)})


def test_a_notebook_stops_at_its_first_cell_on_a_bad_parameter(tmp_path: Path) -> None:
    with pytest.raises(papermill.PapermillExecutionError, match="points must be an integer >= 2, got -3"):
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "mode_connectivity.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
            parameters={"rows": [{"label": "tiny", "config": "tiny"}], "seeds": [0, 1], "points": -3, "runs_root": str(tmp_path / "store")},
            progress_bar=False,
        )
    assert not (tmp_path / "store").exists()


def test_mexit_book_checks_every_page_of_the_profile_before_training(tmp_path: Path) -> None:
    profile = load_profile("tiny")
    profile["notebooks"]["calibration"] = {**profile["notebooks"].get("calibration", {}), "bins": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ParameterError, match="bins must be an integer >= 1, got 0"):
        execute_notebooks(str(path), ROOT, runs_root=str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()
