"""Real early exit timed on this machine, beside the MACs' prediction."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mexit.analysis.runs import wall_clock_table  # noqa: E402
from mexit.evaluate import Scoring, run_points  # noqa: E402
from mexit.evaluate.timing import machine, time_early_exit  # noqa: E402
from mexit.models import build  # noqa: E402
from mexit.plots import time_against_cost  # noqa: E402
from mexit.study import ParameterError, make_study  # noqa: E402


def test_leaving_at_the_first_exit_takes_less_time_than_running_every_exit() -> None:
    torch.manual_seed(0)
    model = build("resnet20", 10, in_chans=1, placement=[1, 2]).eval()
    images = torch.randn(256, 1, 32, 32)
    timed = time_early_exit(model, images, [0.0, 1.0], batch_size=128, repeats=3)
    assert timed["time_pct"].iloc[0] == 100 and math.isnan(timed["threshold"].iloc[0])
    first, last = timed["time_pct"].iloc[1:]
    assert first < last  # threshold 0 sends every image out after the first of 9 blocks; 1 keeps all to the end
    with pytest.raises(RuntimeError, match="eval mode"):
        time_early_exit(model.train(), images, [0.5])
    assert "cores" in machine()


def test_the_wall_clock_table_times_each_budgets_operating_point(tmp_path) -> None:
    # a store of its own: runs trained here (one thread) must not stand in for the nbval notebooks' runs
    s = make_study(rows=[{"label": "tiny", "config": "tiny"}], seeds=[0, 1], regimes=["joint", "mixed"], runs_root=str(tmp_path))
    points = run_points(s.outputs(), Scoring(budgets=(0.5, 1.0), grid="dense"))
    table = wall_clock_table(s, points, samples=64, batch_size=32, repeats=1)
    assert set(table["seed"]) == {0}  # the study's first seed by default
    fitting = points[(points["seed"] == 0)].dropna(subset=["operating_point"])
    assert len(table) == len(fitting) + 2  # one backbone row per run
    backbone = table[table["budget"].isna()]
    assert backbone["time_pct"].tolist() == [100.0, 100.0] and backbone["cost_pct"].tolist() == [100.0, 100.0]
    assert time_against_cost(table).get_xlabel().startswith("Expected cost")
    with pytest.raises(ParameterError, match="seeds"):
        wall_clock_table(s, points, seeds=[7])
    with pytest.raises(ParameterError, match="threshold-scored runs only"):
        wall_clock_table(s, points.assign(evaluation="patience"))
