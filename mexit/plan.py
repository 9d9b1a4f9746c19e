"""What a profile is and what its notebooks need: the parameters each notebook gets, and every run
each page reads, declared in one place (:func:`page_runs`). Below :mod:`mexit.book` (which trains
and executes) and :mod:`mexit.sweep` (which submits): both plan from here.

A profile (``mexit/profiles/<name>.yaml``) is only a set of parameter values, in the manner of
NCAR CUPiD's ``config.yml``: ``global_params`` go to every notebook, ``notebooks.<name>`` adds or
replaces values for one notebook. Each notebook receives only the parameters its ``parameters``
cell declares.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mexit.config import PROFILE_DIR
from mexit.parameters import CHECKS, STUDY_PARAMETERS, check_values

NOTEBOOK_DIR = Path("notebooks")
PROFILE_KEYS: tuple[str, ...] = ("global_params", "notebooks")


def load_profile(name: str) -> dict[str, Any]:
    """A profile's ``global_params`` and per-notebook ``notebooks`` parameter groups, from a shipped
    profile's name or a YAML file of the same shape."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise ValueError(f"unknown profile {name!r}; allowed: {known}, or a .yaml file")
    profile = yaml.safe_load(path.read_text()) or {}
    unknown = set(profile) - set(PROFILE_KEYS)
    if unknown or not isinstance(profile.get("global_params", {}), dict):
        raise ValueError(f"profile {path} must hold global_params and notebooks mappings, got keys {sorted(profile)}")
    return {"global_params": profile.get("global_params") or {}, "notebooks": profile.get("notebooks") or {}}


def notebook_parameters(profile: Mapping[str, Any], notebook: str) -> dict[str, Any]:
    """The values one notebook gets from a profile: the global ones, then the notebook's own."""
    return {**profile["global_params"], **(profile["notebooks"].get(notebook) or {})}


def notebook_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / NOTEBOOK_DIR).glob("*.ipynb"))


def needed_runs(
    profile: Mapping[str, Any], declared: Mapping[str, Any], runs_root: Path, *, require_data: bool = True
) -> dict[str, tuple[str, Any]]:
    """Every run the notebooks read, once: ``{run key: (progress label, RunConfig)}``, the union of
    :func:`page_runs` over the notebooks, in row, seed, regime order (so that a shared phase, P1 of
    disjoint and mixed, comes first). ``declared`` maps each notebook to the parameters its
    ``parameters`` cell declares; ``require_data`` False plans runs whose ``data_root`` is not on
    this machine."""
    return union_runs(runs_by_page(profile, declared, runs_root, require_data=require_data))


def union_runs(by_page: Mapping[str, Mapping[str, tuple[str, Any]]]) -> dict[str, tuple[str, Any]]:
    """Every run of :func:`runs_by_page`'s pages once, in the pages' order."""
    needed: dict[str, tuple[str, Any]] = {}
    for runs in by_page.values():
        for key, run in runs.items():
            needed.setdefault(key, run)
    return needed


def runs_by_page(
    profile: Mapping[str, Any], declared: Mapping[str, Any], runs_root: Path, *, require_data: bool = True
) -> dict[str, dict[str, tuple[str, Any]]]:
    """:func:`page_runs` of each notebook of ``declared`` at ``profile``: ``{notebook: {run key: (label, RunConfig)}}``."""
    return {
        name: {config.key(): (label, config) for label, config in page_runs(page_values(profile, name, parameters), runs_root, require_data=require_data)}
        for name, parameters in declared.items()
    }


def page_values(profile: Mapping[str, Any], name: str, declared: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the parameters notebook ``name`` declares: the profile's, else the notebook's default."""
    values = {**declared_defaults(declared), **notebook_parameters(profile, name)}
    return {key: value for key, value in values.items() if key in declared}


def page_runs(values: Mapping[str, Any], runs_root: Path, *, require_data: bool = True) -> list[tuple[str, Any]]:
    """Every run one page reads, from its parameter ``values`` (those it declares): ``[(progress
    label, RunConfig)]``. The one place that says what a page reads, so that ``mexit plan``,
    ``mexit sweep`` and ``mexit book`` train it before any notebook executes:

    - the ``rows`` x ``seeds`` x ``regimes`` it compares (and, an ablation, its ``variants``);
    - the same on its ``fresh_seeds`` (Table 1's verdicts on fresh seeds);
    - Table 1's runs at an equal training budget (``equal_budget``, ``p1_share``:
      :func:`mexit.study.equal_budget_study`);
    - the gradient-dominance page's joint runs with gradient equilibrium (``equilibrium``,
      ``equilibrium_seeds``: :func:`mexit.study.equilibrium_configs`);
    - the runs that check phases a schedule ended (``longer_schedule``:
      :meth:`mexit.study.Study.schedule_checks`);
    - the IC-design page's retrained placements (``target_budgets``:
      :func:`mexit.placement_design.planned_study`), once its dense runs are stored: the placements
      are chosen on them, so ``mexit book`` plans again after training (:func:`mexit.book.train_needed`).

    A page without ``rows``, ``seeds`` and ``regimes`` reads no run."""
    from mexit.study import equal_budget_study, equilibrium_configs, run_label

    s = page_study(values, runs_root, require_data=require_data)
    if s is None:
        return []
    fresh = s.with_seeds(values["fresh_seeds"]) if "fresh_seeds" in values else None
    equal = equal_budget_study(s, values.get("equal_budget"), values.get("p1_share", 0.6))
    tagged = [("", pair) for part in (s, fresh) if part is not None for pair in part.configs()]
    tagged += [("longer schedule", pair) for part in (s, fresh) if part is not None for pair in part.schedule_checks()]
    tagged += [("equal budget", pair) for pair in (equal.configs() if equal is not None else [])]
    if values.get("equilibrium"):
        tagged += [("gradient equilibrium", pair) for pair in equilibrium_configs(s, values.get("equilibrium_seeds"))]
    if "target_budgets" in values:
        from mexit.placement_design import planned_study

        design = planned_study(s, values["target_budgets"])  # its one dense row checked first; None until that row's runs are stored
        tagged += [("", pair) for pair in (design.configs() if design is not None else [])]
    return [(run_label(dataclasses.replace(row, variant=tag) if tag else row, config), config) for tag, (row, config) in tagged]


def page_study(values: Mapping[str, Any], runs_root: Any, *, require_data: bool = True) -> Any:
    """The study a page's ``values`` describe (None for a page without ``rows``, ``seeds`` and
    ``regimes``), every parameter checked first (:func:`mexit.parameters.check_values`, then the
    study's own checks): a :class:`~mexit.config.ParameterError` naming the first bad one, before
    anything is trained."""
    from mexit.study import make_study

    check_values(values)
    if not {"rows", "seeds", "regimes"} <= set(values):
        return None
    scoring = {name: values[name] for name in ("budgets", "grid", "pick", "aggregate", "ztw_final", "longer_schedule") if name in values}
    return make_study(
        rows=values["rows"], seeds=values["seeds"], regimes=values["regimes"], runs_root=runs_root,
        variants=values.get("variants"), require_data=require_data, **scoring,
    )


def check_page(values: Mapping[str, Any]) -> Any:
    """Check every parameter of a page and return the study they describe (None for a page without
    one), as a notebook's first cell after its parameters does: ``s = check_page(globals())`` checks
    each name of ``values`` that is a notebook parameter (:data:`mexit.parameters.CHECKS`, and the
    study's: rows, seeds, regimes, variants, budgets, fresh seeds, the equal-budget reading),
    building the studies the page reads without training or loading a run. Raises
    :class:`~mexit.config.ParameterError` naming the first bad one."""
    known = {name: value for name, value in values.items() if name in STUDY_PARAMETERS or name in CHECKS}
    page_runs(known, known.get("runs_root"))
    return page_study(known, known.get("runs_root"))


def declared_defaults(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The default values of a notebook's declared parameters (papermill's reading of its
    ``parameters`` cell), those written as Python literals."""
    defaults = {}
    for name, declared in parameters.items():
        try:
            defaults[name] = ast.literal_eval(declared["default"])
        except (ValueError, SyntaxError):
            continue  # an expression, not a literal: the notebook computes it
    return defaults


def declared_parameters(root: Path, names: Sequence[str]) -> dict[str, Any]:
    """The parameters each named notebook's ``parameters`` cell declares: ``{notebook: {name:
    {"name", "default"}}}``, ``default`` the source of the value (papermill's shape). Read from the
    cell's syntax tree, so that a value written over several lines is read whole (papermill's own
    reader takes its first line only)."""
    return {name: parameters_cell(root / NOTEBOOK_DIR / f"{name}.ipynb") for name in names}


def parameters_cell(path: Path) -> dict[str, dict[str, str]]:
    """The names a notebook's cell tagged ``parameters`` assigns, each with its value's source."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    cells = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path} must have one cell tagged 'parameters', has {len(cells)}")
    source = cells[0].source
    declared = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            declared[node.targets[0].id] = {"name": node.targets[0].id, "default": ast.get_source_segment(source, node.value) or ""}
    return declared
