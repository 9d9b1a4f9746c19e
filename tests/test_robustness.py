"""Beyond the paper: corrupted test images, out-of-distribution sets, and the pages' tables and claims."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mexit import claims
from mexit.analysis.robustness import check_ood_parameters, check_shift_parameters, rows_without_point, severity_means, shift_table
from mexit.data import DataConfig
from mexit.data.generated import write
from mexit.data.loading import load
from mexit.evaluate import run_points
from mexit.evaluate.corruptions import CORRUPTIONS, SEVERITIES, Corruption, imagenet_c, imagenet_c_folder, perturbed
from mexit.evaluate.ood import exit_ood_auroc, threshold_ood_auroc
from mexit.evaluate.ood_sets import OOD_SETS, ood_set
from mexit.smoke import ensure_ood_data, ood_datasets_read, smoke_profile
from mexit.study import ParameterError, make_study

GREY = torch.full((3, 64, 64), 0.5)


def _picture() -> torch.Tensor:
    """A 3 x 32 x 32 image in [0, 1] with edges and mid-tones: a smooth ramp and a bright square."""
    ramp = torch.linspace(0.1, 0.9, 32).expand(32, 32)
    image = ramp.clone()
    image[8:20, 10:22] = 1.0
    return torch.stack([image, ramp, 1 - ramp])


@pytest.mark.parametrize("family", CORRUPTIONS)
def test_every_corruption_stays_in_range_is_repeatable_and_grows_with_severity(family: str) -> None:
    image = _picture()
    change = []
    for severity in SEVERITIES:
        corrupted = Corruption(family, severity)(image, 7)
        assert corrupted.shape == image.shape and corrupted.dtype == torch.float32
        assert corrupted.min() >= 0 and corrupted.max() <= 1
        assert torch.equal(corrupted, Corruption(family, severity)(image, 7))  # the same on every pass
        change.append(float((corrupted - image).abs().mean()))
    assert change[-1] > change[0] > 0
    grey = Corruption(family, 3)(image[:1], 0)  # one channel as well as three
    assert grey.shape == (1, 32, 32)


def test_corruptions_follow_their_stated_levels() -> None:
    noised = Corruption("gaussian_noise", 1)(GREY, 0)
    assert float((noised - 0.5).std()) == pytest.approx(0.04, rel=0.05)  # s = 0.04 at severity 1
    assert not torch.equal(noised, Corruption("gaussian_noise", 1)(GREY, 1))  # each image its own draw
    halves = torch.zeros(1, 4, 4)
    halves[:, :2] = 1.0  # mean 0.5
    low = Corruption("contrast", 1)(halves, 0)  # c = 0.75: (x - 0.5) * 0.75 + 0.5
    assert sorted(low.unique().tolist()) == [0.125, 0.875]
    colour = torch.stack([halves[0], 0.2 + 0.5 * halves[0]])  # channel means 0.5 and 0.45, as theirs: per channel
    assert Corruption("contrast", 1)(colour, 0).mean(dim=(-2, -1)).tolist() == pytest.approx([0.5, 0.45])
    salted = Corruption("impulse_noise", 5)(GREY, 0)  # 7% of the pixels set to 0 or 1
    assert float(((salted == 0) | (salted == 1)).float().mean()) == pytest.approx(0.07, abs=0.01)
    assert torch.equal(Corruption("pixelate", 1)(GREY, 0), GREY)  # a flat image has nothing to lose
    with pytest.raises(ValueError, match="corruption must be one of"):
        Corruption("fog", 1)
    with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\)"):
        Corruption("contrast", 6)


def test_the_corruptions_draws_are_independent_of_the_test_splits_noise() -> None:
    """Seeded alike, (0, 2, index), the gaussian noise of severity 2 once drew the very noise the
    test split of data seed 0 adds: the two added up and severity 2 read worse than severity 5."""
    from mexit.data.loading import _Noise

    for index in range(5):
        split_noise = _Noise(1.0, (0, 2))(torch.zeros(3, 64, 64), index).flatten()
        drawn = ((Corruption("gaussian_noise", 2)(GREY, index) - 0.5) / 0.06).flatten()
        assert abs(float(torch.corrcoef(torch.stack([split_noise, drawn]))[0, 1])) < 0.1


def test_a_perturbed_split_corrupts_before_the_tasks_noise_and_keeps_labels() -> None:
    test = load(DataConfig(name="digits", noise_std=0.5)).test
    corrupted = perturbed(test, Corruption("gaussian_blur", 5))
    image, label = corrupted[3]
    assert label == test[3][1] and len(corrupted) == len(test)
    unit = test.pipeline.to_unit(test.source.image(int(test.indices[3])))
    # the scene blurred, then the test split's own noise (fixed per image), then normalised
    expected = test.pipeline.finish(test.noise(Corruption("gaussian_blur", 5)(unit, 3), 3))
    assert torch.allclose(image, expected)


def _write_imagenet_c(root: Path, family: str, severity: int) -> Path:
    """ImageNet-C's layout made from the generated ImageNet's val images: <family>/<severity>/<class>/<image>."""
    folder = root / "imagenet-c" / family / str(severity)
    shutil.copytree(root / "val", folder)
    return folder


def test_imagenet_c_files_are_read_where_data_root_holds_them(tmp_path: Path) -> None:
    write(tmp_path, "imagenet", classes=3, train_per_class=10, test_per_class=2)
    config = DataConfig(name="imagenet", data_root=str(tmp_path), image_size=32)
    _write_imagenet_c(tmp_path, "contrast", 2)
    files = imagenet_c(config, "contrast", 2)
    assert files is not None and len(files) == 6
    assert sorted(files.targets.tolist()) == sorted(load(config).test.targets.tolist())
    assert files[0][0].shape == (3, 32, 32)
    assert imagenet_c_folder(config, "contrast", 3) is None and imagenet_c(config, "contrast", 3) is None
    assert imagenet_c_folder(DataConfig(name="digits"), "contrast", 2) is None


def test_generated_out_of_distribution_sets_take_the_datasets_shape_and_no_label() -> None:
    digits = DataConfig(name="digits")
    for name in ("gaussian-noise", "photo-patches"):
        foreign = ood_set(name, digits, 5)
        image, label = foreign[2]
        assert len(foreign) == 5 and image.shape == (1, 8, 8) and label == -1
        assert torch.equal(image, ood_set(name, digits, 5)[2][0]) and not torch.equal(image, foreign[3][0])
    noisy = DataConfig(name="digits", noise_std=0.5)  # the task's test-time noise reaches foreign images too
    assert not torch.equal(ood_set("photo-patches", noisy, 5)[2][0], ood_set("photo-patches", digits, 5)[2][0])
    assert torch.equal(ood_set("photo-patches", noisy, 5)[2][0], ood_set("photo-patches", noisy, 5)[2][0])
    colour = ood_set("photo-patches", DataConfig(name="cifar10", data_root="/nowhere"), 2)[0][0]
    assert colour.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="ood set must be one of"):
        ood_set("svhn", digits, 5)


def test_a_dataset_as_out_of_distribution_set_is_resized_to_the_models_input(tmp_path: Path) -> None:
    write(tmp_path, "cifar10", classes=2, train_per_class=10, test_per_class=3)
    foreign = ood_set("cifar10", DataConfig(name="mnist5k"), 4, data_root=str(tmp_path))
    assert len(foreign) == 4 and foreign[0][0].shape == (1, 32, 32) and foreign[0][1] == -1
    assert "cifar10" in OOD_SETS
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        ood_set("cifar10", DataConfig(name="mnist5k"), 4, data_root=str(tmp_path / "empty"))


def _peaked(n: int, exits: int = 3, classes: int = 4, scale: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = 0.1 * rng.normal(size=(exits, n, classes))
    logits[:, :, 0] += scale
    return logits


def test_out_of_distribution_auroc_per_exit_and_along_the_thresholds() -> None:
    own, foreign = _peaked(50, scale=8.0), _peaked(40, scale=0.0, seed=1)
    assert exit_ood_auroc(own, foreign) == pytest.approx([100.0] * 3)  # every own image more confident
    assert exit_ood_auroc(own, own) == pytest.approx([50.0] * 3)  # the same scores: ties count one half
    costs, backbone = [1.0, 2.0, 4.0], 4.0
    along = threshold_ood_auroc(own, foreign, costs, backbone, [0.0, 1.0])
    assert along["id_cost_pct"].tolist() == [25.0, 100.0] and along["ood_cost_pct"].tolist() == [25.0, 100.0]
    # a threshold the own images pass at the first exit and the foreign ones never: they run to the end
    middle = threshold_ood_auroc(own, foreign, costs, backbone, [0.9])
    assert middle["id_cost_pct"].item() == 25.0 and middle["ood_cost_pct"].item() == 100.0
    assert middle["ood_auroc"].item() == 100.0
    with pytest.raises(ValueError, match="one E and C"):
        exit_ood_auroc(own, foreign[:, :, :3])


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory):
    # a store of its own: runs trained here (one thread) must not stand in for the nbval notebooks' runs
    store = tmp_path_factory.mktemp("robustness-store")
    s = make_study(rows=[{"label": "tiny", "config": "tiny"}], seeds=[0, 1], regimes=["joint", "mixed"],
                   runs_root=str(store), budgets=[0.5, 1.0], grid="dense")
    return s, run_points(s.outputs(), s.scoring), s.evidence()[0]


def test_the_shift_table_reads_each_run_at_its_clean_operating_points(tiny_study) -> None:
    s, points, evidence = tiny_study
    shift = shift_table(s, points, corruptions=["contrast"], severities=[1, 5], samples=10_000, batch_size=64)
    assert len(shift) == 4 * 3 * 2  # runs x (clean, two severities) x budgets
    clean = shift[shift["severity"] == 0].merge(points, on=["regime", "seed", "budget"], suffixes=("", "_full"))
    # every test image read, clean: the points Table 1's scoring gives
    assert np.allclose(clean["accuracy"], clean["accuracy_full"], equal_nan=True)
    assert np.allclose(clean["cost_pct"], clean["cost_pct_full"], equal_nan=True)
    assert set(shift["source"]) == {"clean", "generated"} and set(shift["corruption"]) == {"none", "contrast"}
    assert shift.equals(shift_table(s, points, corruptions=["contrast"], severities=[1, 5], samples=10_000, batch_size=64))
    means = severity_means(shift, 1.0)
    assert len(means) == 4 * 3 and set(means["budget"]) == {1.0}
    status = claims.shift_claims(shift, evidence)
    assert status["scale"].str.contains("severity 1").any() and len(status) == 2
    assert set(status["key"]) == {"mixed_ahead_under_shift"}
    with pytest.raises(ParameterError, match="corruptions must be a list of distinct values of"):
        shift_table(s, points, corruptions=["fog"])
    with pytest.raises(ParameterError, match=r"severities must be a list of distinct values of \(1, 2, 3, 4, 5\)"):
        check_shift_parameters(["contrast"], [0], 10, 10)
    with pytest.raises(ParameterError, match="samples must be an integer >= 2"):
        check_shift_parameters(["contrast"], [1], 1, 10)
    with pytest.raises(ParameterError, match="budget must be one of"):
        severity_means(shift, 0.3)


def test_the_ood_table_and_its_claim(tiny_study) -> None:
    from mexit.analysis.robustness import ood_table

    s, points, evidence = tiny_study
    ood = ood_table(s, points, ood_sets=["gaussian-noise"], samples=16, batch_size=16)
    exits = ood[ood["view"] == "exit"]
    assert len(exits) == 4 * 3 and exits["ood_auroc"].between(0, 100).all()
    along = ood[ood["view"] == "threshold"]
    assert along.groupby(["regime", "seed"]).size().unique().tolist() == [105]  # the dense grid
    at_budgets = ood[ood["view"] == "budget"]
    assert len(at_budgets) == points.dropna(subset=["operating_point"]).shape[0]
    status = claims.ood_claims(ood, evidence)
    assert status["scale"].tolist() == ["tiny, gaussian-noise (mean over exits)"]
    with pytest.raises(ParameterError, match="ood_sets must be a list of distinct values of"):
        ood_table(s, points, ood_sets=["gaussian-noise", "gaussian-noise"])
    with pytest.raises(ParameterError, match="ood_sets must be a list of distinct values of"):
        check_ood_parameters("svhn", 10, 10)


def test_the_wall_clock_claim_reads_the_lowest_budget_every_timed_run_meets_one_replicate_a_seed() -> None:
    """The replicates are the timed seeds, each the mean over its regimes: the three regimes of one
    seed are not three seeds."""
    timings = pd.DataFrame({
        "row": "r", "regime": ["joint", "joint", "joint", "mixed", "mixed"], "seed": 0,
        "budget": [math.nan, 0.25, 0.5, math.nan, 0.5], "time_pct": [100.0, 40.0, 70.0, 100.0, 80.0],
    })
    evidence = pd.DataFrame({"row": "r", "regime": ["joint", "mixed"], "seed": [0, 0], "evidence": True, "early_stopped": True, "why": ""})
    one_seed = claims.wall_clock_claims(timings, evidence)
    assert one_seed["effects"].item() == (25.0,) and one_seed["scale"].item() == "r (budgets 50%)"
    assert one_seed["verdict"].item() == "untested at this scale"  # one timed seed: no interval
    two = pd.concat([timings, timings.assign(seed=1, time_pct=[100.0, 45.0, 74.0, 100.0, 78.0])], ignore_index=True)
    untimed = evidence.assign(seed=2, evidence=False, why="P2: still rising")  # a seed not timed cannot block the claim
    both = claims.wall_clock_claims(two, pd.concat([evidence, evidence.assign(seed=1), untimed], ignore_index=True))
    assert both["effects"].item() == pytest.approx((25.0, 24.0)) and both["seeds"].item() == 2 and both["left_out"].item() == ()
    five = pd.concat([timings.assign(seed=s) for s in range(5)], ignore_index=True)
    one_failing = pd.concat([evidence.assign(seed=s, evidence=s != 3, why="P2: still rising" if s == 3 else "") for s in range(5)])
    four = claims.wall_clock_claims(five, one_failing)  # the seed rule, as every claim: decided on 4 of 5
    assert four["seeds"].item() == 4 and four["left_out"].item() == (3,) and four["verdict"].item() == "held"


def test_adding_evaluation_inputs_keys_no_run_anew() -> None:
    """Corrupted and foreign inputs are read at evaluation only: their modules lie outside the code
    whose fingerprint keys every run (the training path's import closure), and inside the code
    that keys the robustness tables."""
    from mexit.config import TRAINING_ROOTS
    from mexit.fingerprint import closure

    for module in ("corruptions", "ood_sets", "ood"):
        assert f"mexit.evaluate.{module}" not in closure(TRAINING_ROOTS)
        assert f"mexit.evaluate.{module}" in closure(("mexit.analysis.robustness",))


def test_the_smoke_generates_the_out_of_distribution_datasets(tmp_path: Path) -> None:
    from mexit.plan import load_profile

    smoke = smoke_profile(load_profile("paper"), tmp_path)
    assert smoke["notebooks"]["out_of_distribution"]["ood_root"] == str(tmp_path / "ood")
    assert ood_datasets_read(smoke) == ["cifar10"]
    root = ensure_ood_data(tmp_path, ["cifar10"])
    assert (root / "cifar-10-batches-py").is_dir() and ensure_ood_data(tmp_path, ["cifar10"]) == root


def test_rows_without_an_operating_point_at_a_budget_are_named() -> None:
    means = pd.DataFrame({
        "row": ["ResNet", "ResNet", "MSDNet", "MSDNet"], "regime": ["joint", "mixed"] * 2, "seed": 0, "budget": 0.25,
        "severity": 0, "accuracy": [70.0, 72.0, float("nan"), float("nan")], "cost_pct": [24.0, 23.0, float("nan"), float("nan")],
    })
    assert rows_without_point(means) == ["MSDNet"]
    assert rows_without_point(means[means["row"] == "ResNet"]) == []
