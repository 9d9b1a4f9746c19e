"""Tests of MSDNet as a backbone of mexit.models: shapes, costs, early exit, regimes, stored runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mexit.pipeline import train_or_load, trained_model
from mexit.config import load_config
from mexit.flops import exit_costs
from mexit.models import build
from mexit.models.msdnet import pack, unpack
from mexit.regimes import PHASE_SPECS, apply_phase
from mexit.store import RunStore

SMALL = {"num_blocks": 3, "step": 1, "base": 1, "channels": 4, "growth_rate": 2}


def test_cifar_configuration_gives_one_exit_per_block() -> None:
    model = build("msdnet", 10, in_chans=1, img_size=32, placement="every", num_blocks=4, step=1, base=2)
    assert len(model.blocks) == 4 and model.num_exits == 4 and model.placement == (1, 2, 3)
    logits = model(torch.randn(2, 1, 32, 32))
    assert [out.shape for out in logits] == [(2, 10)] * 4
    first, last = model.blocks[0], model.blocks[-1]
    assert [shape[1:] for shape in first.in_shapes] == [(32, 32), (16, 16), (8, 8)]  # 3 scales
    assert last.out_shapes[-1][1:] == (8, 8) and len(last.out_shapes) < 3  # finest scales dropped
    first_conv = model.ics[0].body[1][0]  # head=None: MSDNet's classifier (128-channel strided convs)
    assert first_conv.stride == (2, 2) and first_conv.out_channels == 128


def test_imagenet_configuration_has_four_scales_and_a_strided_stem() -> None:
    model = build("msdnet-imagenet", 5, img_size=64, placement="every", channels=4, growth_rate=4)
    assert len(model.blocks) == 5 and model.num_exits == 5
    assert [shape[1:] for shape in model.blocks[0].in_shapes] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [out.shape for out in model(torch.randn(2, 3, 64, 64))] == [(2, 5)] * 5


@pytest.mark.parametrize("head", ["msdnet", "pooled", "conv"])
def test_every_map_head_reads_the_coarsest_scale(head: str) -> None:
    model = build("msdnet", 3, in_chans=1, img_size=8, placement=[1, 2], head=head, **SMALL)
    coarsest = model.blocks[0].out_shapes[-1]
    assert model.ics[0].body[0].shape == coarsest
    assert [out.shape for out in model(torch.randn(4, 1, 8, 8))] == [(4, 3)] * 3


def test_bad_options_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="head='linear'.*msdnet, pooled, conv|heads for this backbone"):
        build("msdnet", 3, head="linear")
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        build("msdnet", 3, num_blocks=0)
    with pytest.raises(ValueError, match="does not take \\['depth'\\]"):
        build("msdnet", 3, depth=3)
    with pytest.raises(ValueError, match="bottleneck_factors .* one factor per scale"):
        build("msdnet", 3, growth_factors=[1, 2])
    with pytest.raises(ValueError, match="reduction must be a number in \\(0, 1\\]"):
        build("msdnet", 3, reduction=0)
    with pytest.raises(ValueError, match="expected packed scales"):
        build("msdnet", 3, img_size=8, placement=[], **SMALL)(torch.zeros(1, 3, 16, 16))


def test_pack_and_unpack_round_trip() -> None:
    scales = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    back = unpack(pack(scales), [(3, 4, 4), (5, 2, 2)])
    assert all(torch.equal(a, b) for a, b in zip(scales, back))


def test_costs_grow_with_depth_at_the_papers_order_of_magnitude() -> None:
    # Huang et al. (ICLR 2018), Fig. 7 (CIFAR-100, budgeted batch): MSDNets cost about 1e7 to 1e8
    # multiply-adds per image; the default 7-block CIFAR MSDNet measured 15.0 M MACs at the first
    # exit and 72.5 M at the last (classifiers included, as the paper counts them).
    model = build("msdnet", 100, img_size=32, placement="every")
    costs = exit_costs(model)
    assert list(costs.macs) == sorted(costs.macs) and len(set(costs.macs)) == 7
    assert 3e6 < costs.macs[0] < 3e7 and 3e7 < costs.macs[-1] < 3e8
    assert round(costs.macs[0] / 1e5) == 150 and round(costs.macs[-1] / 1e5) == 725  # pinned: 15.0 M, 72.5 M
    assert costs.backbone_macs < costs.macs[-1]  # the ICs (MSDNet classifiers) cost something


def test_early_exit_equals_the_simulation_from_all_exit_logits() -> None:
    torch.manual_seed(0)
    model = build("msdnet", 4, in_chans=1, img_size=8, placement="every", **SMALL).eval()
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        probs = torch.stack(model(x)).softmax(-1)  # (exits, N, classes)
    top = probs[0].amax(-1).sort().values
    threshold = float(top[15:17].mean())  # between two samples' confidences: no ties
    confident = probs[:-1].amax(-1) >= threshold
    expected = torch.where(confident.any(0), confident.float().argmax(0), model.num_exits - 1)
    out = model.early_exit(x, threshold)
    assert torch.equal(out.exit_index, expected)
    assert 0 < (expected == 0).sum() < 32
    chosen = probs[expected, torch.arange(32)]
    assert torch.equal(out.preds, chosen.argmax(-1))


def test_p3_leaves_the_backbone_bit_identical_and_trains_the_classifiers() -> None:
    torch.manual_seed(0)
    model = build("msdnet", 4, in_chans=1, img_size=8, placement="every", **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phase = PHASE_SPECS["P3"]
    handle = apply_phase(model, phase)
    model.train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(2):
        logits = model(torch.randn(8, 1, 8, 8))
        loss = sum(torch.nn.functional.cross_entropy(logits[i], torch.randint(0, 4, (8,)))
                   for i in phase.exits_in_loss(model.num_exits))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    handle.remove()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("ics."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("ics."))


def test_p1_trains_through_the_final_classifier_and_gradient_equilibrium_runs() -> None:
    model = build("msdnet", 4, in_chans=1, img_size=8, placement="every", **SMALL)
    handle = apply_phase(model, PHASE_SPECS["P1"])
    assert PHASE_SPECS["P1"].exits_in_loss(model.num_exits) == [model.num_exits - 1]
    assert not any(p.requires_grad for p in model.ic_parameters())
    model(torch.randn(4, 1, 8, 8))[-1].sum().backward()
    assert all(p.grad is not None for p in model.backbone_parameters())
    handle.remove()
    model.gradient_equilibrium = True
    sum(out.sum() for out in model(torch.randn(4, 1, 8, 8))).backward()
    assert all(p.grad is not None for p in model.ic_parameters())


@pytest.mark.parametrize("regime", ["disjoint", "joint", "mixed"])
def test_tiny_runs_train_in_every_regime(tmp_path: Path, regime: str) -> None:
    overrides = [
        "model.backbone=msdnet", "model.placement=every", "model.head=msdnet",
        "model.backbone_kwargs={num_blocks: 3, step: 1, base: 1, channels: 4, growth_rate: 2}",
        f"train.regime={regime}",
    ]
    run = train_or_load(RunStore(tmp_path), load_config("tiny", overrides))
    logits = run.logits("test")
    assert logits.shape[0] == 3 and logits.shape[2] == 10 and torch.isfinite(logits).all()
    assert len(run.metrics["test_acc"]) == 3
    assert run.costs["macs"] == sorted(run.costs["macs"])


def test_evaluation_and_every_analysis_accept_an_msdnet(tmp_path: Path) -> None:
    from mexit.analysis import barrier, block_mutual_information, block_ranks, gradient_dominance, linear_path
    from mexit.data import DataConfig, load
    from mexit.evaluate import budget_table

    overrides = [
        "model.backbone=msdnet", "model.placement=every", "model.head=msdnet",
        "model.backbone_kwargs={num_blocks: 3, step: 1, base: 1, channels: 4, growth_rate: 2}",
    ]
    runs = [train_or_load(RunStore(tmp_path), load_config("tiny", [*overrides, f"train.regime={r}"])) for r in ("joint", "mixed")]
    table = budget_table([run.outputs() for run in runs], by=("regime",))
    assert len(table) == 2 * 4 and table["final_accuracy_mean"].notna().all()
    model, other = (trained_model(run) for run in runs)
    data = load(DataConfig(name="digits")).test
    images = torch.stack([data[i][0] for i in range(32)])
    labels = torch.tensor([data[i][1] for i in range(32)])
    dominance = gradient_dominance(model, images, labels)
    assert torch.allclose(torch.tensor(dominance.groupby("block")["share"].sum().to_numpy()), torch.tensor(1.0, dtype=torch.float64))
    path = linear_path(model, other, data, data, points=3, bn_batches=1, batch_size=64)
    assert len(path) == 3 * 3 and len(barrier(path)) == 3
    assert len(block_ranks(model, data, samples=64)) == 3
    assert len(block_mutual_information(model, data, samples=64)) == 3


def _output_grad(model: torch.nn.Module, x: torch.Tensor, exit_index: int, block: torch.nn.Module) -> list[torch.Tensor]:
    """The gradient of exit `exit_index`'s summed squared logits at `block`'s output, one map per scale."""
    outputs: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        outputs.append(output)

    handle = block.register_forward_hook(keep)
    model(x)[exit_index].square().sum().backward()
    handle.remove()
    return unpack(outputs[0].grad, block.out_shapes)


def _stem_grad(model: torch.nn.Module, x: torch.Tensor, exit_index: int) -> torch.Tensor:
    model.zero_grad()
    model(x)[exit_index].square().sum().backward()
    return torch.cat([p.grad.flatten() for p in model.stem.parameters()])


def test_imta_gradient_equilibrium_scales_the_coarsest_scale_only() -> None:
    """At the block feeding the last IC (two exits left) the final exit's gradient is halved: on
    the whole output under ours, on the coarsest scale only under IMTA's rule (the finer scale's
    passes unscaled); the IC's own, which reaches the coarsest scale only, is halved by both. So
    ours scales the stem's gradient from the final exit by 1/3, and IMTA's rule does not."""
    torch.manual_seed(0)
    model = build("msdnet", 4, in_chans=1, img_size=8, placement="every", **SMALL).eval().double()
    block = model.blocks[1]
    assert model.num_exits == 3 and model.placement == (1, 2) and len(block.out_shapes) == 2  # a finer and the coarsest
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    plain, ours, imta = {}, {}, {}
    for exit_index in (1, 2):
        model.gradient_equilibrium = False
        plain[exit_index] = _output_grad(model, x, exit_index, block)
        model.gradient_equilibrium = True
        for rule, found in (("whole-output", ours), ("coarsest-scale", imta)):
            model.equilibrium = rule
            found[exit_index] = _output_grad(model, x, exit_index, block)
    finer, coarsest = 0, 1
    for exit_index in (1, 2):
        for found in (ours, imta):
            assert torch.allclose(found[exit_index][coarsest], plain[exit_index][coarsest] / 2, rtol=1e-12, atol=0)
    assert plain[1][finer].abs().sum() == 0 and plain[2][finer].abs().sum() > 0  # the IC reads the coarsest scale
    assert torch.allclose(ours[2][finer], plain[2][finer] / 2, rtol=1e-12, atol=0)
    assert torch.equal(imta[2][finer], plain[2][finer])

    model.gradient_equilibrium = False
    stem_plain = _stem_grad(model, x, 2)
    model.gradient_equilibrium = True
    model.equilibrium = "whole-output"
    assert torch.allclose(_stem_grad(model, x, 2), stem_plain / 3, rtol=1e-9, atol=1e-15)
    model.equilibrium = "coarsest-scale"
    assert not torch.allclose(_stem_grad(model, x, 2), stem_plain / 3, rtol=1e-3)
