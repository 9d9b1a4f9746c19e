"""The ablation pages' one helper: what each ablation notebook shows, computed once from its study."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from mexit import claims  # noqa: E402
from mexit.evaluate import budget_table, run_points  # noqa: E402
from mexit.pages import VARIANT_GROUPS, ablation_page  # noqa: E402
from mexit.study import make_study  # noqa: E402

VARIANTS = [
    {"label": "pooled", "overrides": []},
    {"label": "conv 1L", "overrides": ["model.head=conv", "model.head_kwargs.num_layers=1"]},
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    # a store of its own: runs trained here (one thread) must not stand in for the nbval notebooks' runs
    s = make_study(rows=[{"label": "tiny", "config": "tiny"}], seeds=[0, 1], regimes=["disjoint", "joint", "mixed"],
                   runs_root=str(tmp_path_factory.mktemp("store")), variants=VARIANTS)
    return ablation_page(s, change=(claims.LARGER_ICS_HELP_DISJOINT, "disjoint", "disjoint"))


def test_an_ablation_page_scores_its_study_as_the_study_says(page) -> None:
    outputs = page.study.outputs()
    assert page.table.equals(budget_table(outputs, page.study.scoring, by=VARIANT_GROUPS))
    assert page.points.equals(run_points(outputs, page.study.scoring))
    assert page.table.groupby(["variant", "regime"], sort=False)["n"].first().to_dict() == {
        (v, r): 2 for v in ("pooled", "conv 1L") for r in ("disjoint", "joint", "mixed")
    }
    tested = page.status.set_index("key")
    assert len(tested.loc["mixed_ahead"]) == 2  # one per variant
    assert tested.loc[claims.LARGER_ICS_HELP_DISJOINT.key, "verdict"] == "untested: not converged"  # one tiny epoch


def test_an_ablation_page_glues_what_its_text_cites_and_summarises_what_nbval_checks(page) -> None:
    glued = page.glued("tiny")
    assert (glued["ahead_held"], glued["ahead_tested"]) == (0, 2)  # tiny runs are no evidence
    assert glued["ahead_sentence"].startswith("Mixed stays ahead of the other regimes (\"held\") in 0 of the 2 variants")
    assert (glued["p1_runs"], glued["p1_states"]) == (8, 2)  # disjoint and mixed, 2 variants, 2 seeds; one P1 per seed
    assert list(glued["claims"].index) == list(claims.status_view(page.status, "tiny").index)
    lines = page.summary().splitlines()
    assert lines[-3:] == ["exits per run: [3]", "P1 states per seed: [1, 1]", "evidence runs: 0 of 12"]
    assert page.head_costs()["variant"].tolist() == ["pooled", "conv 1L"]
    assert page.head_costs().set_index("variant").loc["conv 1L", "ic_macs"] > page.head_costs().set_index("variant").loc["pooled", "ic_macs"]


def test_an_ablation_page_draws_a_panel_per_row_and_per_row_and_variant(page) -> None:
    assert len(page.variant_figure().axes) == 1
    assert [ax.get_title() for ax in page.curve_figure().axes] == ["tiny - pooled", "tiny - conv 1L"]
    assert page.evidence_view().index.names == list(VARIANT_GROUPS)


def test_an_ablation_page_whose_claims_read_a_stated_budget_shows_the_runs_that_learned(page) -> None:
    """The phase split's verdicts need only runs that learned: its evidence table and summary say
    that, not how many fixed-budget runs (never early-stopped) converged."""
    assert page.needs == "convergence"
    assert "evidence runs (converged, learned)" in page.evidence_view().columns
    at_budget = dataclasses.replace(page, status=page.status.assign(key=claims.SPLIT_BEATS_JOINT.key))
    assert at_budget.needs == "learned"
    assert list(at_budget.evidence_view().columns) == ["runs that learned at the stated budget", "not evidence"]
    learned = int((page.evidence["learned"] & page.evidence["full_budget"]).sum())
    assert at_budget.summary().splitlines()[-1] == f"runs that learned at the stated budget: {learned} of 12"
    mixed_keys = page.status.assign(key=[claims.SPLIT_BEATS_JOINT.key] + [claims.MIXED_AHEAD.key] * (len(page.status) - 1))
    assert dataclasses.replace(page, status=mixed_keys).needs == "convergence"


def test_an_ablation_page_needs_variants(tmp_path) -> None:
    s = make_study(rows=[{"label": "tiny", "config": "tiny"}], seeds=[0], regimes=["joint", "mixed"], runs_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs a study with variants"):
        ablation_page(s)


def test_no_two_notebooks_share_a_cell_of_more_than_two_calls() -> None:
    """What pages share lives in the package: two notebooks may share a cell's imports and a call or
    two (``s = make_study(...)``, ``page.variant_figure()``), never a block of copied logic."""
    import ast
    import json
    from pathlib import Path

    cells: dict[str, list[str]] = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
                continue
            statements = [n for n in ast.parse("".join(cell["source"])).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
            if len(statements) > 2:
                cells.setdefault(ast.dump(ast.Module(body=statements, type_ignores=[])), []).append(f"{path.name}[{index}]")
    assert [places for places in cells.values() if len(places) > 1] == []
