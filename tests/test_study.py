"""Notebook parameters: checked before any training, one message naming the parameter; runs shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mexit.evaluate import Scoring, training_macs_per_sample
from mexit.study import ParameterError, make_study

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
        ({"pick": "first"}, ["pick", "first", "last, best"]),
        ({"aggregate": "seeds"}, ["aggregate", "seeds", "runs, curves"]),
        ({"ztw_final": "none"}, ["ztw_final", "none", "ensembled, plain"]),
        ({"runs_root": 3}, ["runs_root"]),
    ],
)
def test_a_bad_parameter_is_named_before_anything_is_built(changes: dict[str, Any], names: list[str], tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as raised:
        make_study(**_params(**{"runs_root": str(tmp_path / "store"), **changes}))
    message = str(raised.value)
    for name in names:
        assert name in message
    assert "\n" not in message
    assert not (tmp_path / "store").exists()


def test_a_study_lists_every_run_row_by_row_and_seed_by_seed() -> None:
    s = make_study(**_params(rows=[TINY_ROW, {"label": "deeper", "config": "tiny", "overrides": ["model.backbone=resnet32"]}]))
    listed = [(row.label, config.train.seed, config.train.regime) for row, config in s.configs()]
    assert listed == [
        (label, seed, regime) for label in ("tiny", "deeper") for seed in (0, 1) for regime in ("disjoint", "joint", "mixed")
    ]
    assert {config.model.backbone for row, config in s.configs() if row.label == "deeper"} == {"resnet32"}
    assert s.pairs == [("mixed", "joint"), ("mixed", "disjoint")]
    assert make_study(**_params(regimes=["joint", "mixed"])).pairs == [("mixed", "joint")]


def test_runs_root_none_is_the_default_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEXIT_RUNS", str(tmp_path))
    assert make_study(**_params(runs_root=None)).runs_root == tmp_path


def test_runs_are_trained_once_and_shared_between_studies(tmp_path: Path) -> None:
    first = make_study(**_params(seeds=[0], runs_root=str(tmp_path)))
    outputs = first.outputs()
    assert [o.tags["regime"] for o in outputs] == ["disjoint", "joint", "mixed"]
    assert {o.tags["row"] for o in outputs} == {"tiny"}
    stored = sorted(p.name for p in (tmp_path / "phases").iterdir())
    assert len(stored) == 4  # P1 shared by disjoint and mixed: P1, P3, P2 (joint), P2 (mixed)
    again = make_study(**_params(seeds=[0], regimes=["mixed"], runs_root=str(tmp_path))).outputs()
    assert again[0].tags["run"] == outputs[2].tags["run"]
    assert sorted(p.name for p in (tmp_path / "phases").iterdir()) == stored
    phases = first.phase_costs()
    assert list(phases["phase"]) == ["P1", "P3", "P2", "P1", "P2"]
    assert phases.loc[phases["regime"] == "disjoint", "phase_key"].iloc[0] == phases.loc[phases["regime"] == "mixed", "phase_key"].iloc[0]
    assert (phases["epoch_cap"] == 1).all() and (phases["steps"] > 0).all()
    run = first.runs()[0][1]
    p1 = training_macs_per_sample("P1", run.costs["macs"], run.costs["backbone_macs"])
    assert phases["train_macs"].iloc[0] == p1 * run.config.train.optim.batch_size * phases["steps"].iloc[0]
    assert phases["train_macs"].iloc[1] < phases["train_macs"].iloc[0]  # P3's backward skips the frozen backbone
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


def test_final_exits_set_the_backbone_trained_alone_beside_it_trained_with_its_ics() -> None:
    import pandas as pd

    from mexit.study import final_exits

    exits = pd.DataFrame(
        {"row": ["A"] * 6 + ["B"] * 3, "regime": ["disjoint"] * 4 + ["joint"] * 2 + ["disjoint", "disjoint", "joint"],
         "exit": [0, 1, 0, 1, 0, 1, 0, 1, 1], "seed": [0, 0, 1, 1, 0, 0, 0, 0, 0],
         "accuracy": [50.0, 20.0, 52.0, 30.0, 60.0, 90.0, 40.0, 70.0, 80.0]}
    )
    table = final_exits(exits)
    assert table.loc["A"].to_dict() == {"disjoint": 25.0, "joint": 90.0}  # the last exit of each row, mean over seeds
    assert table.loc["B"].to_dict() == {"disjoint": 70.0, "joint": 80.0}


def test_the_papers_table1_is_six_rows_of_three_regimes() -> None:
    from mexit.reference import paper_accuracy, paper_rows, paper_table1

    table = paper_table1()
    assert list(table.columns) == ["model", "dataset", "disjoint", "joint", "mixed"] and len(table) == 6
    assert paper_rows()[0] == "ResNet-34 / CIFAR-100"
    assert paper_accuracy("ResNet-34 / CIFAR-100", "mixed") == 75.88  # the paper's own number, cited in the data file
    assert paper_accuracy(None, "mixed") is None
    with pytest.raises(ValueError, match="allowed"):
        paper_accuracy("ResNet-20 / MNIST", "mixed")


HEADS = [
    {"label": "pooled", "overrides": []},
    {"label": "conv 2L", "overrides": ["model.head=conv", "model.head_kwargs.num_layers=2"]},
    {"label": "split", "overrides": ["train.epochs=[1, 2]"], "regimes": ["mixed"]},
    {"label": "PBEE rule", "overrides": [], "exit_method": "pbee", "rows": ["tiny"]},
]


def test_variants_cross_every_row_in_order_with_their_own_regimes_and_rows() -> None:
    deeper = {"label": "deeper", "config": "tiny", "overrides": ["model.backbone=resnet32"]}
    s = make_study(**_params(rows=[TINY_ROW, deeper], seeds=[0], variants=HEADS))
    listed = [(row.label, row.variant, config.train.regime) for row, config in s.configs()]
    regimes = ("disjoint", "joint", "mixed")
    assert listed == [
        *[("tiny", v, r) for v in ("pooled", "conv 2L") for r in regimes], ("tiny", "split", "mixed"),
        *[("tiny", "PBEE rule", r) for r in regimes],
        *[("deeper", v, r) for v in ("pooled", "conv 2L") for r in regimes], ("deeper", "split", "mixed"),
    ]
    configs = {(row.label, row.variant): config for row, config in s.configs()}
    assert configs[("deeper", "conv 2L")].model.backbone == "resnet32"  # the row's overrides, then the variant's
    assert configs[("deeper", "conv 2L")].model.head_kwargs == {"num_layers": 2}
    assert configs[("tiny", "split")].train.epochs == [1, 2]
    rows = {(row.label, row.variant): row for row in s.rows}
    assert rows[("tiny", "PBEE rule")].exit_method == "pbee" and rows[("tiny", "pooled")].exit_method is None
    assert rows[("tiny", "conv 2L")].tags == {"row": "tiny", "variant": "conv 2L"}
    assert make_study(**_params()).rows[0].tags == {"row": "tiny"}


@pytest.mark.parametrize(
    ("variants", "names"),
    [
        ([], ["variants", "non-empty list"]),
        ("pooled", ["variants", "non-empty list"]),
        ([{"label": "x", "colour": "red"}], ["variants[0]", "label, overrides, regimes, rows, exit_method"]),
        ([{"overrides": []}], ["variants[0].label"]),
        ([{"label": "x", "overrides": "model.head=conv"}], ["variants[0].overrides"]),
        ([{"label": "x"}, {"label": "x"}], ["variants", "distinct labels"]),
        ([{"label": "x", "regimes": ["hybrid"]}], ["variants[0].regimes", "disjoint"]),
        ([{"label": "x", "rows": ["other"]}], ["variants[0].rows", "tiny"]),
        ([{"label": "x", "exit_method": "l3w"}], ["variants[0].exit_method", "l3w", "pbee"]),
        ([{"label": "ok"}, {"label": "huge", "overrides": ["model.head=huge"]}], ["variants[1]", "huge", "rows[0]", "pooled"]),
        ([{"label": "deep", "overrides": ["model.placement=[3, 12]"]}], ["variants[0]", "out of range"]),
    ],
)
def test_a_bad_variant_is_named_before_anything_is_built(variants: Any, names: list[str], tmp_path: Path) -> None:
    with pytest.raises(ParameterError) as raised:
        make_study(**_params(runs_root=str(tmp_path / "store"), variants=variants))
    message = str(raised.value)
    assert message.startswith(names[0]) and "\n" not in message
    for name in names[1:]:
        assert name in message
    assert not (tmp_path / "store").exists()


def test_head_costs_and_p1_sharing_summarise_the_runs() -> None:
    import numpy as np
    import pandas as pd

    from mexit.evaluate import ExitOutputs
    from mexit.study import head_costs, p1_sharing

    def run(variant: str, costs: list[float]) -> ExitOutputs:
        logits = np.zeros((len(costs), 2, 3))
        return ExitOutputs(logits, np.array([0, 1]), np.array(costs), 100.0, tags={"row": "R", "variant": variant})

    table = head_costs([run("small", [30.0, 60.0, 102.0]), run("small", [30.0, 60.0, 102.0]), run("none", [100.0])])
    assert table.to_dict("records") == [
        {"row": "R", "variant": "small", "ics": 2, "ic_macs": 2.0, "ic_pct": 2.0, "macs_per_ic": 1.0},
        {"row": "R", "variant": "none", "ics": 0, "ic_macs": 0.0, "ic_pct": 0.0, "macs_per_ic": 0.0},
    ]
    phases = pd.DataFrame(
        [  # disjoint and mixed of two variants on one P1; joint; a run listed under two variants counts once
            {"row": "R", "seed": 0, "run": "d1", "phase": "P1", "phase_key": "p"}, {"row": "R", "seed": 0, "run": "d1", "phase": "P3", "phase_key": "a"},
            {"row": "R", "seed": 0, "run": "m1", "phase": "P1", "phase_key": "p"}, {"row": "R", "seed": 0, "run": "m1", "phase": "P2", "phase_key": "b"},
            {"row": "R", "seed": 0, "run": "m2", "phase": "P1", "phase_key": "p"}, {"row": "R", "seed": 0, "run": "m2", "phase": "P2", "phase_key": "c"},
            {"row": "R", "seed": 0, "run": "m2", "phase": "P1", "phase_key": "p"}, {"row": "R", "seed": 0, "run": "m2", "phase": "P2", "phase_key": "c"},
            {"row": "R", "seed": 0, "run": "j1", "phase": "P2", "phase_key": "d"},
            {"row": "R", "seed": 1, "run": "m3", "phase": "P1", "phase_key": "q"}, {"row": "R", "seed": 1, "run": "m3", "phase": "P2", "phase_key": "e"},
        ]
    )
    assert p1_sharing(phases).to_dict("records") == [
        {"row": "R", "seed": 0, "runs": 3, "p1_states": 1}, {"row": "R", "seed": 1, "runs": 1, "p1_states": 1},
    ]


def test_scoring_picks_the_best_point_on_validation_and_the_last_on_test() -> None:
    assert make_study(**_params()).scoring == Scoring(grid="dense", fit="test")
    best = make_study(**_params(pick="best", aggregate="curves", ztw_final="plain"))
    assert best.scoring == Scoring(grid="dense", pick="best", fit="val", aggregate="curves", ztw_final="plain")


def test_counting_table_compares_each_rows_exit_costs_under_both_countings(tmp_path: Path) -> None:
    from mexit.flops import exit_costs
    from mexit.pipeline import trained_model
    from mexit.study import counting_table

    s = make_study(**_params(seeds=[0], regimes=["joint"], runs_root=str(tmp_path), rows=[{**TINY_ROW, "overrides": ["train.dominance_every=0"]}]))
    table = counting_table(s)
    run = s.runs()[0][1]
    assert table["row"].unique().tolist() == ["tiny"] and len(table) == len(run.metrics["test_acc"])
    assert table["macs"].tolist() == list(run.costs["macs"])  # ours: what the run stored
    authors = exit_costs(trained_model(run), tuple(run.metrics["input_shape"]), counting="fvcore")
    assert table["fvcore"].tolist() == list(authors.macs) and (table["fvcore"] > table["macs"]).all()


def test_a_study_on_fresh_seeds_keeps_everything_but_the_seeds() -> None:
    s = make_study(**_params(seeds=[0, 1]))
    fresh = s.with_seeds([2, 3])
    assert fresh is not None and fresh.seeds == (2, 3) and fresh.regimes == s.regimes
    assert s.rows[0].config.train.dominance_every > 0  # the tiny config probes; no page reads a fresh seed's probes
    assert fresh.rows == s.without_probes().rows and fresh.rows[0].config.train.dominance_every == 0
    assert [row.config.model for row in fresh.rows] == [row.config.model for row in s.rows]
    assert s.with_seeds([]) is None
    with pytest.raises(ParameterError, match=r"fresh_seeds must be disjoint from seeds \[0, 1\]; both hold \[1\]"):
        s.with_seeds([1, 2])
    with pytest.raises(ParameterError, match="fresh_seeds must be distinct"):
        s.with_seeds([2, 2])
    with pytest.raises(ParameterError, match="fresh_seeds must be a non-empty list of integers"):
        s.with_seeds("2, 3")
