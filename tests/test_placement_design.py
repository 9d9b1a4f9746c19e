"""The IC-design page: subsets of a dense model's ICs, their costs, the choice per budget (on
validation only), the retrained placements' study and its claims."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mexit import claims
from mexit.config import ParameterError, load_config
from mexit.evaluate import ExitOutputs
from mexit.flops import exit_costs
from mexit.models import build_model
from mexit.placement_design import (
    DENSE, choose_placements, dense_readings, design_choices, design_claims, design_study, design_table, head_macs, ic_positions,
    regime_sentences, retrained_readings, subset_costs,
)
from mexit.plan import check_page, page_runs
from mexit.study import make_study

SHAPE, CLASSES = (1, 8, 8), 10


def test_a_subsets_costs_are_those_of_the_model_built_with_its_placement() -> None:
    config = load_config("tiny", ["model.placement=every"])
    dense = exit_costs(build_model(config, SHAPE, CLASSES), SHAPE)
    heads = head_macs(config, SHAPE, CLASSES)
    assert len(heads) == 8 and all(h > 0 for h in heads)
    for kept in ([], [0], [2, 5], [1, 3, 4, 7]):
        blocks = [k + 1 for k in kept]
        alone = exit_costs(build_model(load_config("tiny", [f"model.placement={blocks}"]), SHAPE, CLASSES), SHAPE)
        assert subset_costs(dense.macs, heads, kept).tolist() == list(alone.macs)  # exact: integers of MACs
    assert subset_costs(dense.macs, heads, range(8)).tolist() == list(dense.macs)
    with pytest.raises(ValueError, match="kept must be increasing"):
        subset_costs(dense.macs, heads, [3, 1])
    with pytest.raises(ValueError, match="one value per IC"):
        subset_costs(dense.macs, heads[:3], [0])


N_VAL, N_TEST = 60, 40
COSTS = [10.0, 20.0, 30.0, 40.0]  # three ICs after blocks 1, 2, 3, each head 1 MAC; the backbone 37 + final head
HEADS = [1.0, 1.0, 1.0]


def _logits(labels: np.ndarray, sure: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits that predict ``labels`` confidently where ``sure``, else a random class unsurely."""
    n = len(labels)
    logits = rng.normal(0, 0.1, (n, 3))
    guesses = np.where(sure, labels, rng.integers(0, 3, n))
    logits[np.arange(n), guesses] += np.where(sure, 8.0, 0.3)
    return logits


def _dense_run(regime: str, seed: int, good_ic: int) -> ExitOutputs:
    """A dense run whose IC ``good_ic`` (0-based) is right and sure on every image, the other ICs
    unsure and mostly wrong, the final exit right."""
    rng = np.random.default_rng(seed)
    def split(n: int, labels: np.ndarray) -> np.ndarray:
        exits = [_logits(labels, np.full(n, k == good_ic), rng) for k in range(3)]
        return np.stack([*exits, _logits(labels, np.ones(n, bool), rng)])
    val_labels = rng.integers(0, 3, N_VAL)
    labels = rng.integers(0, 3, N_TEST)
    return ExitOutputs(split(N_TEST, labels), labels, COSTS, 38.0, split(N_VAL, val_labels), val_labels,
                       tags={"row": "r", "regime": regime, "seed": seed, "run": f"{regime}{seed}"})


def test_the_known_best_subset_is_chosen_per_regime_and_budget() -> None:
    dense = [_dense_run("joint", s, good_ic=0) for s in (0, 1)] + [_dense_run("mixed", s, good_ic=1) for s in (0, 1)]
    choices = choose_placements(dense, HEADS, [1, 2, 3], [0.3, 0.6, 1.0])
    chosen = {(r.regime, r.budget): (r.placement, r.val_accuracy) for r in choices.itertuples()}
    # joint: IC 1 alone (11 MACs) is right on every image; mixed: IC 2 alone (21 MACs) is, and fits from 60% on
    assert chosen[("joint", 0.3)] == ([1], 100.0) and chosen[("joint", 0.6)] == ([1], 100.0)
    assert chosen[("mixed", 0.6)] == ([2], 100.0)
    # at 30% (11.4 MACs) every image leaves at IC 1 but a few, which IC 2 then gets right
    assert chosen[("mixed", 0.3)][0] == [1, 2] and chosen[("mixed", 0.3)][1] < 100.0
    assert chosen[("joint", 1.0)] == ([], 100.0)  # the final exit alone is as good and has the fewest ICs
    assert set(choices["search"]) == {"exhaustive (8 subsets)"}
    greedy = choose_placements(dense, HEADS, [1, 2, 3], [0.6], max_exhaustive=2)
    assert greedy["placement"].tolist() == [[1], [2]] and greedy["search"].str.startswith("greedy").all()


def test_the_choice_never_reads_the_test_labels() -> None:
    dense = [_dense_run("joint", s, good_ic=2) for s in (0, 1)]
    rng = np.random.default_rng(9)  # test labels and logits replaced by noise: the choice is the same
    wrong = [dataclasses.replace(d, test_labels=np.zeros(N_TEST, dtype=np.int64), test_logits=rng.normal(size=d.test_logits.shape)) for d in dense]
    assert choose_placements(dense, HEADS, [1, 2, 3], [0.5, 0.9]).equals(choose_placements(wrong, HEADS, [1, 2, 3], [0.5, 0.9]))
    with pytest.raises(ValueError, match="validation"):
        choose_placements([ExitOutputs(d.test_logits, d.test_labels, COSTS, 38.0, tags=d.tags) for d in dense], HEADS, [1, 2, 3], [0.5])


def test_readings_table_and_claims_from_dense_and_retrained_runs() -> None:
    dense = [_dense_run(r, s, good_ic=g) for r, g in (("joint", 0), ("mixed", 1)) for s in (0, 1, 2)]
    choices = choose_placements(dense, HEADS, [1, 2, 3], [0.6])
    readings = dense_readings(dense, choices, HEADS, [1, 2, 3])
    assert set(readings["chosen_by"]) == {"joint", "mixed", DENSE} and len(readings) == 6 * 3
    # retrained: the same logits, read as the placement alone (a retrained model that predicts exactly)
    from mexit.placement_design import subset_outputs

    retrained = [
        dataclasses.replace(subset_outputs(out, HEADS, [0 if out.tags["regime"] == "joint" else 1]),
                            tags={**out.tags, "variant": f"tuned for 60%, {out.tags['regime']}"})
        for out in dense
    ]
    again = retrained_readings(retrained, choices)
    table = design_table(readings, again, choices)
    assert table.loc[("joint", "60%"), "ICs after blocks"] == "1" and table.loc[("mixed", "60%"), "ICs"] == 1
    assert (table["chosen, retrained (test)"] == table["chosen, read from dense (test)"]).all()
    evidence = pd.DataFrame([
        {"row": "r", "regime": out.tags["regime"], "seed": out.tags["seed"], "variant": variant, "evidence": True,
         "early_stopped": True, "learned": True, "why": ""}
        for out in dense for variant in (DENSE, f"tuned for 60%, {out.tags['regime']}")
    ])
    status = design_claims(readings, again, evidence)
    assert sorted(status["key"]) == sorted([c.key for c in claims.IC_DESIGN_CLAIMS] * 2)
    predicts = status[status["key"] == claims.DENSE_PREDICTS_RETRAINED.key]
    assert (predicts["effect"] == 0).all() and (predicts["verdict"] == "held").all()  # retrained = read: within [-2, 2]
    depends = status[status["key"] == claims.PLACEMENT_DEPENDS_ON_REGIME.key]
    assert (depends["effect"] > 0.5).all()  # each regime's own IC is the one its runs get right
    assert status["family"].str.startswith("IC design").all()
    sentence = regime_sentences(status, claims.DENSE_PREDICTS_RETRAINED)
    assert sentence.startswith("joint: 0.0") and "; mixed: 0.0" in sentence and sentence.count("held") == 2


def test_the_page_plans_its_retrained_placements_once_the_dense_runs_are_stored(tmp_path: Path) -> None:
    values = {"rows": [{"label": "tiny", "config": "tiny", "overrides": ["model.placement=[2, 4, 6]"]}], "seeds": [0, 1],
              "regimes": ["disjoint", "joint", "mixed"], "runs_root": str(tmp_path), "target_budgets": [0.5, 0.75], "grid": "dense"}
    dense_keys = {config.key() for _, config in make_study(**{k: v for k, v in values.items() if k != "target_budgets"}).configs()}
    assert {config.key() for _, config in page_runs(values, tmp_path)} == dense_keys  # nothing to choose from yet
    s = check_page(values)
    s.outputs()  # the dense runs, trained
    choices = design_choices(s, values["target_budgets"])
    assert choices is not None and len(choices) == 6 and ic_positions(s)[0] == (2, 4, 6)
    planned = page_runs(values, tmp_path)
    retrained = design_study(s, choices)
    assert retrained is not None
    keys = {config.key() for _, config in retrained.configs()}
    for row, config in retrained.configs():  # a placement other than the dense one is a run of its own; the dense one is its run
        assert (config.key() in dense_keys) == (list(config.model.placement) == [2, 4, 6])
        assert (config.train.dominance_every > 0) == (list(config.model.placement) == [2, 4, 6])  # no page reads a retrained run's probes
    assert {config.key() for _, config in planned} == dense_keys | keys
    assert {row.regimes for row in retrained.rows} <= {("disjoint",), ("joint",), ("mixed",)}
    hand = pd.DataFrame([{"regime": "joint", "budget": 0.5, "placement": [4], "ics": 1, "val_accuracy": 50.0, "search": "by hand"}])
    alone = design_study(s, hand).configs()
    assert len(alone) == 2 and not {config.key() for _, config in alone} & dense_keys
    assert (tmp_path / "analyses" / "placement_choices").is_dir()  # the choice is kept: planning again reads it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_budgets": [0.5, 1.5]}, r"target_budgets must be fractions of the backbone cost in \(0, 1\], got 1.5"),
        ({"target_budgets": []}, "target_budgets must be a non-empty list"),
        ({"target_budgets": [0.5, 0.5]}, "target_budgets must be distinct fractions"),
        ({"rows": [{"label": "a", "config": "tiny"}, {"label": "b", "config": "tiny"}]}, "rows: the IC-design page reads one dense row"),
        ({"rows": [{"label": "a", "config": "tiny", "overrides": ["model.method=pbee"]}]}, "independent ICs"),
    ],
)
def test_a_bad_design_parameter_is_refused_before_anything_is_trained(change: dict, message: str, tmp_path: Path) -> None:
    values = {"rows": [{"label": "tiny", "config": "tiny"}], "seeds": [0], "regimes": ["joint"], "runs_root": str(tmp_path),
              "target_budgets": [0.5], **change}
    with pytest.raises(ParameterError, match=message):
        page_runs(values, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_the_placement_map_fills_one_square_per_kept_ic() -> None:
    from mexit.plots import placement_map

    choices = pd.DataFrame([
        {"regime": "mixed", "budget": 0.5, "placement": [2, 4]},
        {"regime": "joint", "budget": 0.5, "placement": [4]},
        {"regime": "joint", "budget": 0.25, "placement": None},
    ])
    ax = placement_map(choices, [2, 4, 6])
    faces = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert len(faces) == 9 and sum(face != (1.0, 1.0, 1.0) for face in faces) == 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["joint, 25%", "joint, 50%", "mixed, 50%"]
    assert {t.get_text() for t in ax.texts} == {"none fits", "1 IC", "2 ICs"}
