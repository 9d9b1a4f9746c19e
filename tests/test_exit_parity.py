"""The offline sweeps reported in the book agree with the model's real early-exit inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mexit.evaluate import confidences, patience_sweep, sweep
from mexit.models import build

from floats import separated_thresholds

N, CLASSES = 64, 10
COSTS, BACKBONE = [1.0, 2.0, 3.0, 4.0], 4.0  # only exit shares and accuracy are compared


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, torch.Tensor, np.ndarray, np.ndarray]:
    """A seeded 4-exit model in eval mode, a fixed batch, its all-exit logits [E, N, C] and random labels."""
    torch.manual_seed(0)
    model = build("resnet20", CLASSES, in_chans=1, img_size=8, placement=[2, 4, 6]).eval()
    x = torch.randn(N, 1, 8, 8)
    with torch.no_grad():
        logits = torch.stack(model(x)).numpy()
    labels = np.random.default_rng(0).integers(0, CLASSES, N)
    return model, x, logits, labels


def online(model: torch.nn.Module, x: torch.Tensor, threshold: float, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Exit index and prediction of every sample under the model's own early-exit inference."""
    with torch.no_grad():
        result = model.early_exit(x, threshold, rule=rule)
    return result.exit_index.numpy(), result.preds.numpy()


def assert_row_matches(row, exit_index: np.ndarray, preds: np.ndarray, labels: np.ndarray) -> None:
    shares = np.bincount(exit_index, minlength=len(COSTS)) / N
    np.testing.assert_allclose([row[f"exit_share_{e}"] for e in range(len(COSTS))], shares, atol=1e-12)
    assert row["accuracy"] == pytest.approx(100.0 * np.mean(preds == labels), abs=1e-9)


@pytest.mark.parametrize("rule", ["maxprob", "entropy"])
def test_threshold_sweep_matches_early_exit(case, rule: str) -> None:
    model, x, logits, labels = case
    conf, _ = confidences(logits, rule)
    thresholds = separated_thresholds(conf[:-1], (0.1, 0.3, 0.5, 0.7, 0.9)) + [1.0]
    if rule == "maxprob":
        thresholds = [0.0, *thresholds]  # max-prob is at least 1/C, so every sample leaves at exit 0
    used_exits = set()
    for threshold in thresholds:
        row = sweep(logits, labels, COSTS, BACKBONE, thresholds=[threshold], rule=rule).iloc[0]
        exit_index, preds = online(model, x, threshold, rule)
        assert_row_matches(row, exit_index, preds, labels)
        used_exits |= set(exit_index.tolist())
    assert used_exits == {0, 1, 2, 3}  # the thresholds exercise every exit


def test_patience_sweep_matches_early_exit(case) -> None:
    model, x, logits, labels = case
    curve = patience_sweep(logits, labels, COSTS, BACKBONE)
    assert curve["patience"].tolist() == [0, 1, 2, 3]
    for row in curve.itertuples(index=False):
        exit_index, preds = online(model, x, row.patience, "patience")
        assert_row_matches(row._asdict(), exit_index, preds, labels)
    assert 0 < curve["exit_share_3"].iloc[1] < 1  # patience 1 lets some samples leave early, not all
