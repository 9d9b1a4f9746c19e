"""Notebook parameters: checked before any training, one message naming the parameter; runs shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mexit.study import ParameterError, study

TINY_ROW = {"label": "tiny", "config": "tiny", "overrides": []}


def _params(**changes: Any) -> dict[str, Any]:
    values = {"rows": [TINY_ROW], "seeds": [0, 1], "regimes": ["disjoint", "joint", "mixed"], "runs_root": "runs"}
    return {**values, **changes}


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"rows": [{**TINY_ROW, "overrides": ["model.backbone=resnet7"]}]}, ["rows[0]", "backbone", "resnet20"]),
        ({"rows": [{**TINY_ROW, "config": "no-such-config"}]}, ["rows[0]", "no-such-config", "mnist5k-quick"]),
        ({"rows": [{**TINY_ROW, "overrides": ["model.placement=[3,12]"]}]}, ["rows[0]"]),
        ({"rows": [{**TINY_ROW, "overrides": ["data.name=cifar100", "data.data_root=/no/such/folder"]}]}, ["rows[0]", "data_root", "/no/such/folder"]),
        ({"rows": [{**TINY_ROW, "overrides": ["data.name=cifar100", "data.data_root=null"]}]}, ["rows[0]", "data_root"]),
        ({"rows": [{**TINY_ROW, "colour": "red"}]}, ["rows[0]", "colour", "label, config, overrides, paper"]),
        ({"rows": [{**TINY_ROW, "paper": "ResNet-99 / MNIST"}]}, ["rows[0].paper", "ResNet-34 / CIFAR-100"]),
        ({"rows": [{**TINY_ROW, "overrides": "model.backbone=resnet32"}]}, ["rows[0].overrides"]),
        ({"rows": [TINY_ROW, TINY_ROW]}, ["rows", "distinct labels"]),
        ({"rows": []}, ["rows", "non-empty list"]),
        ({"rows": "tiny"}, ["rows"]),
        ({"regimes": ["disjoint", "hybrid"]}, ["regimes", "hybrid", "disjoint, joint, mixed"]),
        ({"regimes": []}, ["regimes", "non-empty"]),
        ({"seeds": []}, ["seeds", "non-empty list of integers"]),
        ({"seeds": [0, 1.5]}, ["seeds", "integers", "1.5"]),
        ({"seeds": "[0, 1]"}, ["seeds", "-y 'seeds: [0, 1, 2]'"]),
        ({"seeds": [0, True]}, ["seeds", "True"]),
        ({"seeds": [1, 1]}, ["seeds", "distinct"]),
        ({"seeds": [-1]}, ["seeds", "non-negative"]),
        ({"budgets": [0.25, 1.5]}, ["budgets", "(0, 1]", "1.5"]),
        ({"budgets": [0.0]}, ["budgets", "(0, 1]"]),
        ({"budgets": "0.5"}, ["budgets"]),
        ({"grid": "sparse"}, ["grid", "sparse", "paper, dense"]),
        ({"runs_root": 3}, ["runs_root"]),
    ],
)
def test_a_bad_parameter_is_named_before_anything_is_built(changes: dict[str, Any], names: list[str], tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as raised:
        study(**_params(**{"runs_root": str(tmp_path / "store"), **changes}))
    message = str(raised.value)
    for name in names:
        assert name in message
    assert "\n" not in message
    assert not (tmp_path / "store").exists()


def test_a_study_lists_every_run_row_by_row_and_seed_by_seed() -> None:
    s = study(**_params(rows=[TINY_ROW, {"label": "deeper", "config": "tiny", "overrides": ["model.backbone=resnet32"]}]))
    listed = [(row.label, config.train.seed, config.train.regime) for row, config in s.configs()]
    assert listed == [
        (label, seed, regime) for label in ("tiny", "deeper") for seed in (0, 1) for regime in ("disjoint", "joint", "mixed")
    ]
    assert {config.model.backbone for row, config in s.configs() if row.label == "deeper"} == {"resnet32"}
    assert s.pairs == [("mixed", "joint"), ("mixed", "disjoint")]
    assert study(**_params(regimes=["joint", "mixed"])).pairs == [("mixed", "joint")]


def test_runs_root_none_is_the_default_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEXIT_RUNS", str(tmp_path))
    assert study(**_params(runs_root=None)).runs_root == tmp_path


def test_runs_are_trained_once_and_shared_between_studies(tmp_path: Path) -> None:
    first = study(**_params(seeds=[0], runs_root=str(tmp_path)))
    outputs = first.outputs()
    assert [o.tags["regime"] for o in outputs] == ["disjoint", "joint", "mixed"]
    assert {o.tags["row"] for o in outputs} == {"tiny"}
    stored = sorted(p.name for p in (tmp_path / "phases").iterdir())
    assert len(stored) == 4  # P1 shared by disjoint and mixed: P1, P3, P2 (joint), P2 (mixed)
    again = study(**_params(seeds=[0], regimes=["mixed"], runs_root=str(tmp_path))).outputs()
    assert again[0].tags["run"] == outputs[2].tags["run"]
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == stored
    phases = first.phase_costs()
    assert list(phases["phase"]) == ["P1", "P3", "P2", "P1", "P2"]
    assert phases.loc[phases["regime"] == "disjoint", "phase_key"].iloc[0] == phases.loc[phases["regime"] == "mixed", "phase_key"].iloc[0]
    assert (phases["epoch_cap"] == 1).all() and (phases["steps"] > 0).all()
    trace = first.traces()
    assert {"row", "regime", "seed", "step", "phase"} <= set(trace.columns)


def test_backbone_only_is_disjoints_final_exit_at_full_cost() -> None:
    import pandas as pd

    from mexit.study import backbone_only

    exits = pd.DataFrame(
        {"regime": ["disjoint"] * 4 + ["joint"] * 2, "exit": [0, 1, 0, 1, 0, 1], "seed": [0, 0, 1, 1, 0, 0],
         "accuracy": [50.0, 70.0, 52.0, 74.0, 60.0, 99.0], "cost_pct": [40.0, 101.0] * 3}
    )
    assert backbone_only(exits) == (100.0, 72.0)
    assert backbone_only(exits[exits["regime"] == "joint"]) is None


def test_the_papers_table1_is_six_rows_of_three_regimes() -> None:
    from mexit.reference import paper_accuracy, paper_rows, paper_table1

    table = paper_table1()
    assert list(table.columns) == ["model", "dataset", "disjoint", "joint", "mixed"] and len(table) == 6
    assert paper_rows()[0] == "ResNet-34 / CIFAR-100"
    assert paper_accuracy("ResNet-34 / CIFAR-100", "mixed") == 75.88  # the paper's own number, cited in the data file
    assert paper_accuracy(None, "mixed") is None
    with pytest.raises(ValueError, match="allowed"):
        paper_accuracy("ResNet-20 / MNIST", "mixed")
