"""Phases freeze what they say; losses weigh exits as documented."""

from __future__ import annotations

import pytest
import torch

from mexit import models
from mexit.regimes import PHASE_SPECS, apply_phase, exit_weights, multi_exit_loss


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("resnet20", 10, in_chans=1, img_size=8, placement=[3, 6])


def _backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.clone() for i, m in enumerate(model.backbone_modules()) for k, v in m.state_dict().items()}


def _ic_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.ics.state_dict().items()}


def _steps(model: torch.nn.Module, phase: str, steps: int = 3) -> None:
    spec = PHASE_SPECS[phase]
    handle = apply_phase(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    exits = spec.exits_in_loss(model.num_exits)
    weights = exit_weights("uniform", exits, model.num_exits)
    for _ in range(steps):
        model.train()  # a later .train() must not unfreeze anything
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        loss, _ = multi_exit_loss(model(x), y, exits, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    handle.remove()


def test_p3_leaves_the_backbone_bit_identical_including_batchnorm() -> None:
    model = _model()
    backbone, ics = _backbone_state(model), _ic_state(model)
    _steps(model, "P3")
    after = _backbone_state(model)
    assert all(torch.equal(backbone[k], after[k]) for k in backbone), "P3 changed the backbone"
    assert any("running_mean" in k for k in after)
    assert any(not torch.equal(ics[k], v) for k, v in _ic_state(model).items()), "P3 did not train the ICs"


def test_p3_blocks_every_gradient_to_the_backbone() -> None:
    model = _model()
    apply_phase(model, PHASE_SPECS["P3"])
    loss = sum(out.sum() for out in model(torch.randn(4, 1, 8, 8))[:-1])
    loss.backward()
    assert all(p.grad is None for p in model.backbone_parameters())
    assert any(p.grad is not None for p in model.ic_parameters())


def test_p1_trains_the_backbone_only() -> None:
    model = _model()
    backbone, ics = _backbone_state(model), _ic_state(model)
    _steps(model, "P1")
    assert all(torch.equal(ics[k], v) for k, v in _ic_state(model).items()), "P1 changed the ICs"
    assert any(not torch.equal(backbone[k], v) for k, v in _backbone_state(model).items())


def test_p2_trains_everything_and_handles_restore_flags() -> None:
    model = _model()
    backbone, ics = _backbone_state(model), _ic_state(model)
    _steps(model, "P2")
    assert any(not torch.equal(backbone[k], v) for k, v in _backbone_state(model).items())
    assert any(not torch.equal(ics[k], v) for k, v in _ic_state(model).items())
    assert all(p.requires_grad for p in model.parameters())


def test_phase_exits_in_loss() -> None:
    assert PHASE_SPECS["P1"].exits_in_loss(4) == [3]
    assert PHASE_SPECS["P2"].exits_in_loss(4) == [0, 1, 2, 3]
    assert PHASE_SPECS["P3"].exits_in_loss(4) == [0, 1, 2]


def test_exit_weights() -> None:
    assert torch.allclose(exit_weights("uniform", [0, 1, 2, 3], 4), torch.full((4,), 0.25))
    assert torch.allclose(exit_weights("linear", [0, 1, 2, 3], 4), torch.tensor([1, 2, 3, 4]) / 10)
    start, end = exit_weights("sdn", [0, 1, 2, 3], 4, 0.0), exit_weights("sdn", [0, 1, 2, 3], 4, 1.0)
    assert start[-1] > 0.9 and torch.isclose(start.sum(), torch.tensor(1.0))
    assert torch.allclose(end, torch.tensor([0.25, 0.5, 0.75, 1.0]) / 2.5)
    with pytest.raises(ValueError, match="uniform, linear, sdn"):
        exit_weights("cubic", [0], 1)


def test_multi_exit_loss_is_the_weighted_sum_of_cross_entropies() -> None:
    logits = [torch.randn(8, 5) for _ in range(3)]
    targets = torch.randint(0, 5, (8,))
    total, per_exit = multi_exit_loss(logits, targets, [0, 2], torch.tensor([0.25, 0.75]))
    expected = [torch.nn.functional.cross_entropy(out, targets) for out in logits]
    assert torch.allclose(per_exit, torch.stack(expected))
    assert torch.isclose(total, 0.25 * expected[0] + 0.75 * expected[2])


def test_default_weighting_is_linear_for_gpf_and_pbee_only() -> None:
    from mexit.regimes import default_weighting

    assert {m: default_weighting(m) for m in ("sdn", "pbee", "gpf", "ztw")} == {
        "sdn": "uniform", "pbee": "linear", "gpf": "linear", "ztw": "uniform"
    }


def test_removing_a_phase_handle_unfreezes_and_lets_batchnorm_train_again() -> None:
    model = _model()
    handle = apply_phase(model, PHASE_SPECS["P3"])
    norms = [m for b in model.backbone_modules() for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.train()
    model(torch.randn(4, 1, 8, 8))  # the hooks put each frozen module back in eval mode as it runs
    assert norms and not any(m.training for m in norms), "P3 keeps the frozen backbone's BatchNorm in eval mode"
    assert not any(p.requires_grad for b in model.backbone_modules() for p in b.parameters())
    handle.remove()
    model.train()
    model(torch.randn(4, 1, 8, 8))
    assert all(m.training for m in norms), "the eval-mode hooks are gone"
    assert all(p.requires_grad for p in model.parameters())
