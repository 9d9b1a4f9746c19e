"""L2W's learned sample weighting: the exit budget, the meta batch's allocation, the weights, the
meta step (which must leave the model untouched) and an L2W run trained through the store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mexit.pipeline import train_or_load
from mexit.config import load_config, regime_configs
from mexit.models import build
from mexit.sample_weighting import EPSILON, LearnedWeighting, allocate, exit_budget, per_sample_losses
from mexit.store import RunStore


def test_the_exit_budget_falls_geometrically_with_depth() -> None:
    budget = exit_budget(2, p=15)
    assert budget.tolist() == pytest.approx([0.75 / 1.3125, 0.5625 / 1.3125])  # (15/20)^1, (15/20)^2, normalised
    five = exit_budget(5)
    assert float(five.sum()) == pytest.approx(1.0) and all(a > b for a, b in zip(five, five[1:]))
    with pytest.raises(ValueError):
        exit_budget(3, p=20)


def test_each_meta_sample_goes_to_one_exit_the_most_confident_first() -> None:
    # exit 0 is confident on samples 9, 8, 7, ..; exit 1 on samples 0, 1, 2, ..
    ramp = torch.arange(10, dtype=torch.float32)
    first = torch.stack([ramp, torch.zeros(10)], 1)
    second = torch.stack([9 - ramp, torch.zeros(10)], 1)
    final = torch.zeros(10, 2)
    taken = allocate([first, second, final], torch.tensor([0.5, 0.3, 0.2]))
    assert sorted(taken[0].tolist()) == [5, 6, 7, 8, 9]
    assert sorted(taken[1].tolist()) == [0, 1, 2]
    assert sorted(taken[2].tolist()) == [3, 4]
    # a share that rounds to nothing takes nothing; the final exit takes what is left
    none = allocate([first, final], torch.tensor([0.05, 0.95]))
    assert none[0].numel() == 0 and none[1].numel() == 10


def test_weights_average_one_and_spread_with_epsilon() -> None:
    torch.manual_seed(0)
    weighting = LearnedWeighting(3, 3)
    losses = torch.rand(16, 3) * 4
    weights = weighting.weights(losses).detach()
    assert weights.shape == (16, 3) and float(weights.mean()) == pytest.approx(1.0, abs=1e-6)
    assert float((weights - 1).abs().max()) <= 2 * EPSILON + 1e-6  # tanh keeps the spread within 2 epsilon
    assert float(weighting.weighted_loss(losses)) == pytest.approx(float((weights * losses).mean()), rel=1e-6)
    assert weighting.weighted_loss(losses.requires_grad_()).requires_grad  # the model still gets gradients
    restored = LearnedWeighting(3, 3)
    restored.load(weighting.state())
    assert torch.equal(restored.weights(losses).detach(), weights)


def test_a_meta_step_trains_the_weight_network_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = build("resnet20", 4, in_chans=1, img_size=16, placement=[3, 6])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weighting = LearnedWeighting(3, 3)
    wpn_before = [p.clone() for p in weighting.wpn.parameters()]
    images, targets = torch.randn(16, 1, 16, 16), torch.randint(0, 4, (16,))
    meta_loss = weighting.meta_step(model.train(), images[:8], targets[:8], images[8:], targets[8:], [0, 1, 2])
    assert math.isfinite(meta_loss) and meta_loss > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert any(not torch.equal(a, b) for a, b in zip(wpn_before, weighting.wpn.parameters()))
    assert all(p.grad is None for p in model.parameters())
    losses = per_sample_losses(model(images), targets, [0, 2])
    assert losses.shape == (16, 2)


def test_an_l2w_run_trains_in_every_regime_and_differs_from_sdn(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    base = load_config("tiny", ["train.epochs=2"])
    l2w = [train_or_load(store, c) for c in regime_configs(load_config("tiny", ["train.epochs=2", "model.method=l2w"]), ["disjoint", "joint"], [0])]
    sdn = [train_or_load(store, c) for c in regime_configs(base, ["disjoint", "joint"], [0])]
    for a, b in zip(l2w, sdn):
        assert torch.isfinite(a.logits("test")).all()
        assert torch.equal(a.logits("test")[-1], b.logits("test")[-1]) == (a.config.train.regime == "disjoint")  # P1 alike
        assert not torch.equal(a.logits("test")[0], b.logits("test")[0])
    assert l2w[0].phases()["phase_key"][0] == sdn[0].phases()["phase_key"][0]  # one P1 for both methods
