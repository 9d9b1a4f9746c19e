"""Tests of mexit.models: backbones, heads, placement, methods, early exit, gradient equilibrium."""
from __future__ import annotations

import copy
import io
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mexit.pipeline import train_or_load
from mexit.models import BACKBONES, HEADS, METHODS, MultiExit, build, resolve_placement
from mexit.models.backbones import backbone_family, split_timm_vit

VIT = "timm/vit_tiny_patch16_224"
VIT_KW = {"img_size": 16, "patch_size": 4, "head": "linear"}
VIT_BODY = {"img_size": 16, "patch_size": 4}


def run_parts(parts, x: torch.Tensor) -> torch.Tensor:
    h = parts.stem(x)
    for block in parts.blocks:
        h = block(h)
    return parts.final_head(h)


# --- backbones -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "kwargs", "depth", "placement", "width"),
    [
        ("resnet20", {"in_chans": 1}, 9, "every", 64),
        ("resnet32", {}, 15, "every3", 64),
        ("resnet56", {}, 27, [1, 26], 64),
        ("resnet18", {"img_size": 16}, 8, "every", 512),
        ("resnet34", {"img_size": 16}, 16, "resnet50-paper", 512),
        ("resnet50", {"img_size": 16}, 16, "resnet50-paper", 2048),
        ("tv/resnet18", {"in_chans": 1}, 8, "every2", 512),
        ("timm/resnet10t", {"in_chans": 1}, 4, "every", 512),
        (VIT, {**VIT_KW, "in_chans": 1}, 12, "every", 192),
    ],
)
def test_every_family_gives_all_exits(name: str, kwargs: dict, depth: int, placement, width: int) -> None:
    model = build(name, 7, placement=placement, **kwargs)
    assert len(model.blocks) == depth
    assert model.placement == resolve_placement(placement, depth)
    assert model.num_exits == len(model.placement) + 1 == len(model.ics) + 1
    assert model.num_classes == 7
    x = torch.randn(2, *model.input_shape)
    logits = model(x)
    assert len(logits) == model.num_exits
    assert all(out.shape == (2, 7) for out in logits)
    blocks = model.forward_blocks(x)
    assert len(blocks) == depth
    assert blocks[-1].shape[-1 if name == VIT else 1] == width


def test_small_resnets_keep_resolution_in_the_stem() -> None:
    model = build("resnet20", 10, in_chans=1, img_size=32, placement=[])
    shapes = [tuple(b.shape[1:]) for b in model.forward_blocks(torch.zeros(1, 1, 32, 32))]
    assert shapes[0] == (16, 32, 32) and shapes[3] == (32, 16, 16) and shapes[-1] == (64, 8, 8)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_split_vits_compute_what_the_library_model_computes() -> None:
    x = torch.randn(2, 3, 32, 32)
    cases = [
        (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5), split_timm_vit),
        (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5,
                           class_token=False, global_pool="avg"), split_timm_vit),
    ]
    for model, split in cases:
        model.eval()
        expected = model(x)
        parts = split(model, (3, 32, 32), "timm/vit_tiny_patch16_224")
        assert torch.allclose(run_parts(parts, x), expected, atol=1e-5)


def test_a_timm_vit_split_is_verified_against_the_whole_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedding takes the blocks and the head out of the timm model, so the split is checked
    against the output the whole model gave before: a split that drops the final norm is refused."""
    from mexit.models.backbones import ViTClassifier
    from mexit.models.generic import SplitError

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5)
    skipping_norm = lambda self, x: self.head(self.fc_norm(self.pool_tokens(x, self.global_pool, self.num_prefix_tokens, self.pool_include_prefix)))  # noqa: E731
    monkeypatch.setattr(ViTClassifier, "forward", skipping_norm)
    with pytest.raises(SplitError, match=r"backbone='timm/vit_tiny_patch16_224': stem, 12 blocks and head composed do not reproduce"):
        split_timm_vit(model, (3, 32, 32), "timm/vit_tiny_patch16_224")
    monkeypatch.undo()
    built = build("timm/vit_tiny_patch16_224", 5, img_size=32, patch_size=8, placement=[6], head="linear")  # the build path verifies it
    assert built.num_exits == 2 and built.training


@pytest.mark.parametrize(
    ("name", "library", "kwargs"),
    [
        ("timm/resnet10t", lambda n: timm.create_model("resnet10t", num_classes=n), {}),
        ("tv/resnet18", lambda n: torchvision.models.resnet18(num_classes=n), {}),
        (VIT, lambda n: timm.create_model(VIT[5:], num_classes=n, **VIT_BODY), VIT_KW),
    ],
)
def test_checkpoint_loads_a_library_state_dict(tmp_path, name: str, library, kwargs: dict) -> None:
    native = library(5).eval()
    path = tmp_path / "weights.pth"
    torch.save(native.state_dict(), path)
    x = torch.randn(2, 3, *(16, 16) if name == VIT else (32, 32))
    model = build(name, 5, checkpoint=str(path), placement=[1], **kwargs).eval()
    assert torch.allclose(model(x)[-1], native(x), atol=1e-5)
    # Another number of classes: the body loads, the classifier stays freshly initialised.
    other = build(name, 3, checkpoint=str(path), placement=[], **kwargs).eval()
    assert torch.allclose(other.forward_blocks(x)[-1], model.forward_blocks(x)[-1], atol=1e-6)
    assert other(x)[-1].shape == (2, 3)


def test_checkpoint_of_a_small_resnet_is_its_backbone_state_dict(tmp_path) -> None:
    source = build("resnet20", 5, in_chans=1, placement=[]).eval()
    path = tmp_path / "resnet20.pth"
    torch.save(source.state_dict(), path)
    model = build("resnet20", 5, in_chans=1, checkpoint=str(path)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x)[-1], source(x)[-1])


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not match the backbone"):
        build("resnet20", 10, checkpoint=str(path))
    with pytest.raises(ValueError, match="is not a file"):
        build("resnet20", 10, checkpoint=str(tmp_path / "missing.pth"))


def test_parameters_split_into_backbone_and_ics() -> None:
    model = build("resnet20", 10, in_chans=1, method="gpf")
    backbone = {id(p) for p in model.backbone_parameters()}
    ics = {id(p) for p in model.ic_parameters()}
    assert backbone.isdisjoint(ics)
    assert backbone | ics == {id(p) for p in model.parameters()}
    assert ics == {id(p) for p in model.ics.parameters()}
    assert model.backbone_modules() == [model.stem, *model.blocks, model.final_head]


# --- heads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 5])
def test_conv_heads_add_conv_layers_and_work_on_small_maps(num_layers: int) -> None:
    model = build("resnet20", 4, in_chans=1, img_size=8, head="conv", head_kwargs={"num_layers": num_layers})
    convs = [m for m in model.ics[-1].modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == num_layers and all(c.kernel_size == (3, 3) for c in convs)
    assert all(out.shape == (3, 4) for out in model(torch.randn(3, 1, 8, 8)))  # last stage maps are 2x2


def test_pooled_head_mixes_max_and_average_pooling() -> None:
    model = build("resnet20", 4, in_chans=1, img_size=8, placement=[1])
    pool = model.ics[0].body[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        pool.alpha.fill_(1.0)
        assert torch.equal(pool(x), nn.functional.adaptive_max_pool2d(x, 4))
        pool.alpha.fill_(0.0)
        assert torch.allclose(pool(x), nn.functional.adaptive_avg_pool2d(x, 4))
    assert model.ics[0].fc.in_features == 16 * 4 * 4


def test_vit_heads_read_the_class_token_of_the_residual_stream() -> None:
    model = build(VIT, 4, placement=[3], head="mlp", head_kwargs={"hidden": 32, "layers": 3}, **VIT_BODY)
    linears = [m for m in model.ics[0].modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(192, 32), (32, 32), (32, 4)]
    tokens = model.forward_blocks(torch.randn(2, 3, 16, 16))[2]
    changed = tokens.clone()
    changed[:, 1:] += 1.0  # patch tokens only: the IC must not see them
    with torch.no_grad():
        assert torch.equal(model.ics[0](tokens), model.ics[0](changed))
        assert not torch.equal(model.ics[0](tokens), model.ics[0](tokens + 1.0))


# --- placement and bad input -----------------------------------------------------------------

def test_resolve_placement_schemes() -> None:
    assert resolve_placement("every", 5) == (1, 2, 3, 4)
    assert resolve_placement("every2", 9) == (2, 4, 6, 8)
    assert resolve_placement("every3", 9) == (3, 6)
    assert resolve_placement("resnet50-paper", 16) == (5, 7, 9, 11, 13, 15)  # the authors' 0-based 4, 6, .., 14
    assert resolve_placement([2, 7], 8) == (2, 7)
    assert resolve_placement([], 8) == ()


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ([3, 9], r"valid indices are 1\.\.8"),
        ([0, 2], "1-based"),
        ([2, 2], "strictly increasing"),
        ([4, 2], "strictly increasing"),
        ("resnet50-paper", r"out of range .* 1\.\.8"),
        ("sometimes", "unknown placement"),
        ([1.5], "integers"),
    ],
)
def test_bad_placements_name_the_valid_range(placement, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_placement(placement, 9)
    with pytest.raises(ValueError, match=message):
        build("resnet20", 10, placement=placement)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("resnet21", 10), {}, r"unknown backbone.*resnet20.*timm/"),
        (("timm/deit_tiny_distilled_patch16_224", 10), {"img_size": 32, "patch_size": 8}, r"do not reproduce the model's output.*Verified families"),
        (("timm/no_such_net", 10), {}, r"timm has no model .no_such_net."),
        ((VIT, 10), {"img_size": 30, "patch_size": 4}, r"patch_size 4 does not divide the image size 30"),
        ((VIT, 10), {"img_size": 32, "patch_size": 4, "embed_dim": 50, "num_heads": 3}, r"rejected its keyword arguments .*divisible by num_heads"),
        (("tv/vgg16", 10), {}, "no blocks found among its children"),
        (("tv/vgg_16", 10), {}, "torchvision has no classification model 'vgg_16'"),
        (("resnet20", 10), {"head": "big"}, r"unknown head.*pooled, conv, linear, mlp"),
        ((VIT, 10), {"head": "conv"}, r"head='conv' reads feature maps and does not fit.*linear, mlp"),
        (("resnet20", 10), {"head": "linear"}, r"reads ViT tokens .*pooled, conv"),
        (("resnet20", 10), {"head": "conv", "head_kwargs": {"num_layers": 6}}, r"1\.\.5"),
        (("resnet20", 10), {"head_kwargs": {"width": 3}}, "not accepted by head='pooled'"),
        (("resnet20", 10), {"method": "meta"}, r"unknown method.*sdn, pbee, gpf, ztw, l2w"),
        (("resnet20", 10), {"method": "sdn", "method_kwargs": {"state_dim": 8}}, "not accepted"),
        (("resnet20", 0), {}, "num_classes"),
        (("resnet20", 10), {"in_chans": 0}, "in_chans"),
        (("resnet20", 10), {"depth": 3}, "takes no backbone keyword"),
        (("timm/resnet18", 10), {"pretrained": True}, "not on this machine and it is offline"),
        (("timm/resnet18", 10), {"weights": "x"}, "use model.pretrained for published weights"),
        (("timm/resnet18", 10), {"no_such_option": 1}, "rejected its keyword arguments"),
    ],
)
def test_bad_input_is_refused_with_the_allowed_values(args, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(*args, **kwargs)


def test_names_are_listed() -> None:
    assert {"resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50"} <= set(BACKBONES)
    assert backbone_family("tv/resnet50").name == "torchvision" and backbone_family("timm/convnext_atto").name == "timm"
    assert set(HEADS) == {"pooled", "conv", "linear", "mlp", "msdnet"}
    assert set(METHODS) == {"sdn", "pbee", "gpf", "ztw", "l2w"}


# --- one pass, early exit ------------------------------------------------------------------------

def count_calls(model: MultiExit) -> dict[str, int]:
    calls: dict[str, int] = {}
    named = {"stem": model.stem, "final_head": model.final_head}
    named.update({f"block{i}": b for i, b in enumerate(model.blocks, 1)})
    for name, module in named.items():
        calls[name] = 0
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    return calls


@pytest.mark.parametrize("method", ["sdn", "gpf", "ztw"])
def test_forward_runs_each_block_once(method: str) -> None:
    model = build("resnet20", 10, in_chans=1, img_size=8, placement=[2, 5], method=method)
    calls = count_calls(model)
    model(torch.randn(2, 1, 8, 8))
    assert set(calls.values()) == {1}


def test_early_exit_stops_computing_when_every_sample_has_left() -> None:
    model = build("resnet20", 10, in_chans=1, img_size=8, placement=[2, 5]).eval()
    calls = count_calls(model)
    out = model.early_exit(torch.randn(4, 1, 8, 8), threshold=0.0)  # every max-probability exceeds 0
    assert out.exit_index.tolist() == [0, 0, 0, 0]
    assert [calls[f"block{i}"] for i in range(1, 10)] == [1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert calls["final_head"] == 0
    out = model.early_exit(torch.randn(4, 1, 8, 8), threshold=1.0)  # nobody is that sure
    assert out.exit_index.tolist() == [2, 2, 2, 2]


def _in_the_middle_gap(values: torch.Tensor) -> float:
    """Halfway between the two middle values: a threshold that splits the samples in half and sits
    on no sample, so formulas that differ by a few ulps cannot disagree on which side one falls."""
    ordered = values.double().sort().values
    low, high = float(ordered[len(ordered) // 2 - 1]), float(ordered[len(ordered) // 2])
    assert high - low > 1e-6, "the two middle values must leave a gap"
    return (low + high) / 2


def simulate(logits: list[torch.Tensor], rule: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit of each sample from all-exit logits, written independently of mexit's rules."""
    n = logits[0].shape[0]
    exits = torch.full((n,), len(logits) - 1)
    for s in range(n):
        streak, previous = 0, None
        for k, out in enumerate(logits[:-1]):
            p = out[s].softmax(-1)
            if rule == "maxprob":
                leave = p.max() > threshold
            elif rule == "entropy":
                leave = -(p * p.log()).sum() / math.log(len(p)) < 1 - threshold
            else:
                pred = int(p.argmax())
                streak = streak + 1 if pred == previous else 1
                previous = pred
                leave = streak > threshold
            if leave:
                exits[s] = k
                break
    chosen = torch.stack([logits[int(k)][s] for s, k in enumerate(exits)])
    return exits, chosen


@pytest.mark.parametrize(
    ("backbone", "method", "rule", "channels_last"),
    [("resnet20", "sdn", "maxprob", False), ("resnet20", "sdn", "maxprob", True), ("resnet20", "gpf", "maxprob", False),
     ("resnet20", "ztw", "entropy", False), ("resnet20", "pbee", None, True), (VIT, "ztw", "maxprob", False),
     (VIT, "gpf", "entropy", False)],
)
def test_early_exit_equals_simulation_from_all_exit_logits(
    backbone: str, method: str, rule: str | None, channels_last: bool
) -> None:
    torch.manual_seed(0)
    kwargs = {**VIT_KW} if backbone == VIT else {"in_chans": 1, "img_size": 8}
    model = build(backbone, 3, method=method, placement="every2", **kwargs).eval()
    if channels_last:  # as mexit trains CNNs: the pooled ICs then reduce windows of the maps' NHWC view
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(64, *model.input_shape) * 3
    with torch.no_grad():
        logits = model(x)
    if rule is None:  # PBEE: its own patience rule
        threshold = 1
        assert model.exit_rule == "patience"
    elif rule == "maxprob":  # half the samples leave at the first exit
        threshold = _in_the_middle_gap(logits[0].softmax(-1).amax(-1))
    else:
        p = logits[0].softmax(-1)
        threshold = 1 - _in_the_middle_gap(-(p * p.log()).sum(-1) / math.log(3))
    exits, chosen = simulate(logits, rule or "patience", threshold)
    out = model.early_exit(x, threshold, rule)
    assert len(set(exits.tolist())) > 1  # samples leave at different exits
    assert torch.equal(out.exit_index, exits)
    assert torch.allclose(out.logits, chosen, atol=1e-5)
    assert torch.equal(out.preds, chosen.argmax(-1))


def test_early_exit_checks_its_arguments() -> None:
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2])
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="eval"):
        model.early_exit(x, 0.5)
    model.eval()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.early_exit(x, 1.5)
    with pytest.raises(ValueError, match="patience"):
        model.early_exit(x, 0.5, rule="patience")
    with pytest.raises(ValueError, match="unknown rule"):
        model.early_exit(x, 0.5, rule="margin")


def test_pbee_patience_zero_leaves_at_the_first_exit() -> None:
    model = build("resnet20", 3, in_chans=1, img_size=8, method="pbee").eval()
    assert model.method == "pbee"
    x = torch.randn(5, 1, 8, 8)
    assert model.early_exit(x, 0).exit_index.tolist() == [0] * 5
    assert model.early_exit(x, model.num_exits).exit_index.tolist() == [model.num_exits - 1] * 5


# --- gradient equilibrium ------------------------------------------------------------------------

def grads(model: MultiExit, x: torch.Tensor, exit_index: int, module: nn.Module) -> torch.Tensor:
    model.zero_grad()
    model(x)[exit_index].square().sum().backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in module.parameters()])


def test_our_gradient_equilibrium_scales_the_gradients_reaching_each_block() -> None:
    torch.manual_seed(0)
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 5, 7]).eval().double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    k = model.num_exits  # 4
    plain = [model(x)[i].detach() for i in range(k)]
    for exit_index in range(k):
        model.gradient_equilibrium = False
        stem_off, block3_off = grads(model, x, exit_index, model.stem), grads(model, x, exit_index, model.blocks[2])
        model.gradient_equilibrium = True
        stem_on, block3_on = grads(model, x, exit_index, model.stem), grads(model, x, exit_index, model.blocks[2])
        # Below the first IC every exit's gradient is scaled by 1/k (the scales telescope).
        assert torch.allclose(stem_on, stem_off / k, rtol=1e-9, atol=1e-12)
        # Between the first and the second IC, by 1/(k-1); exit 0 does not reach that block.
        if exit_index > 0:
            assert torch.allclose(block3_on, block3_off / (k - 1), rtol=1e-9, atol=1e-12)
        assert stem_on.abs().sum() > 0
    assert all(torch.equal(a, b.detach()) for a, b in zip(model(x), plain))  # forward unchanged


def test_imta_gradient_equilibrium_scales_a_chain_backbone_exactly_as_ours() -> None:
    """A ResNet block outputs one scale, so IMTA's coarsest-scale rule scales all of it, as ours."""
    torch.manual_seed(0)
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 5, 7]).eval().double()
    model.gradient_equilibrium = True
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    for exit_index in range(model.num_exits):
        model.equilibrium = "whole-output"
        ours = grads(model, x, exit_index, model)
        model.equilibrium = "coarsest-scale"
        assert torch.equal(grads(model, x, exit_index, model), ours) and ours.abs().sum() > 0


# --- methods ---------------------------------------------------------------------------------------

def test_ztw_cascade_reads_the_previous_ic_detached() -> None:
    torch.manual_seed(0)
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[1, 2, 3], method="ztw").eval()
    x = torch.randn(4, 1, 8, 8)
    assert model.ics[0].cascade_norm is None and model.ics[1].cascade_norm is not None
    assert model.ics[1].head.fc.in_features == model.ics[0].head.fc.in_features + 3
    before = [out.detach() for out in model(x)]
    with torch.no_grad():
        model.ics[0].head.fc.bias.add_(torch.tensor([3.0, 0.0, -3.0]))
    after = model(x)
    assert not torch.allclose(after[1], before[1])  # IC 1 reads IC 0's logits
    assert torch.equal(after[-1], before[-1])
    model.zero_grad()
    after[1].sum().backward()
    assert all(p.grad is None for p in model.ics[0].parameters())  # ...without sending gradient back
    sdn = build("resnet20", 3, in_chans=1, img_size=8, placement=[1, 2, 3], method="sdn")
    assert sdn.ics[1].fc.in_features == sdn.ics[0].fc.in_features


def test_gpf_combines_past_and_imitated_future_states() -> None:
    torch.manual_seed(0)
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 4, 6], method="gpf",
                  method_kwargs={"state_dim": 16}).eval()
    x = torch.randn(4, 1, 8, 8)
    assert model.ics[0].imitator is None and model.ics[1].imitator is not None
    logits = model(x)
    model.zero_grad()
    logits[1].sum().backward()
    # Exit 1 reads IC 0's state (detached) through IC 0's projection, and guesses IC 2's state.
    assert model.ics[0].project.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ics[0].head.parameters())
    assert model.ics[2].imitator[0].weight.grad.abs().sum() > 0
    assert model.ics[2].head.fc.weight.grad is None
    # The imitation loss teaches earlier ICs to guess later states; later states are only targets.
    model.zero_grad()
    logits = model(x)
    aux = model.auxiliary_loss(logits, torch.zeros(4, dtype=torch.long))
    assert aux.ndim == 0 and 0 <= float(aux.detach()) <= 2
    aux.backward()
    assert model.ics[0].head.fc.weight.grad.abs().sum() > 0
    assert model.ics[2].imitator[0].weight.grad.abs().sum() > 0
    assert model.ics[2].head.fc.weight.grad is None
    with pytest.raises(RuntimeError, match="latest forward"):
        model.auxiliary_loss(logits, torch.zeros(7, dtype=torch.long))


def test_auxiliary_loss_is_none_without_an_imitation_term() -> None:
    x = torch.randn(2, 1, 8, 8)
    targets = torch.zeros(2, dtype=torch.long)
    for method in ("sdn", "pbee", "ztw"):
        model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 4], method=method)
        assert model.auxiliary_loss(model(x), targets) is None
    single = build("resnet20", 3, in_chans=1, img_size=8, placement=[2], method="gpf")
    assert single.auxiliary_loss(single(x), targets) is None


def test_models_copy_and_pickle_after_a_training_forward() -> None:
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 4], method="gpf")
    logits = model(torch.randn(2, 1, 8, 8))
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert twin.placement == model.placement
    with pytest.raises(RuntimeError, match="latest forward"):
        twin.auxiliary_loss(logits, torch.zeros(2, dtype=torch.long))


def test_mixed_pool_equals_adaptive_pooling_on_every_map_size() -> None:
    from mexit.models.heads import MixedPool

    pool = MixedPool(4)
    for size in (32, 16, 8, 4, 6, 3):  # channels-last multiples of 4 sum windows; the rest adaptive pooling
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 3, size, size).contiguous(memory_format=layout).requires_grad_()
            reference = x.detach().contiguous().requires_grad_()
            expected = 0.5 * nn.functional.adaptive_max_pool2d(reference, 4) + 0.5 * nn.functional.adaptive_avg_pool2d(reference, 4)
            pooled = pool(x)
            assert torch.allclose(pooled, expected, atol=1e-6)
            weights = torch.randn_like(expected)
            (pooled * weights).sum().backward()
            (expected * weights).sum().backward()
            assert torch.allclose(x.grad, reference.grad, atol=1e-6), (size, layout)


def test_mixed_pool_without_a_gradient_for_the_map_equals_adaptive_pooling() -> None:
    from mexit.models.heads import MixedPool, window_max

    pool = MixedPool(4)
    x = torch.randn(3, 5, 16, 8).relu().contiguous(memory_format=torch.channels_last)  # ReLU: tied zeros
    expected_max = nn.functional.adaptive_max_pool2d(x, 4)
    assert torch.equal(window_max(x, 4), expected_max)
    alpha = pool.alpha.detach().clone().requires_grad_()
    expected = alpha * expected_max + (1 - alpha) * nn.functional.adaptive_avg_pool2d(x, 4)
    pooled = pool(x)  # x needs no gradient (a frozen backbone's map): the maxima come from window_max
    assert torch.allclose(pooled, expected, atol=1e-6)
    weights = torch.randn_like(expected)
    (pooled * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(pool.alpha.grad, alpha.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(pool(x.requires_grad_()), expected, atol=1e-6)


def test_window_mean_is_average_pooling() -> None:
    from mexit.models.heads import window_mean

    x = torch.randn(3, 5, 12, 8).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(window_mean(x, 4), nn.functional.avg_pool2d(x, (3, 2)), atol=1e-6)
    assert torch.allclose(window_mean(x, 1), x.mean((2, 3), keepdim=True), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet7"}, "unknown backbone='resnet7'"),
        ({"backbone": "resnet20", "head": "linear"}, "head='linear'"),
        ({"backbone": "timm/vit_tiny_patch16_224", "head": "pooled"}, "head='pooled'"),
        ({"backbone": "resnet20", "head": "conv", "head_kwargs": {"num_layers": 9}}, "num_layers"),
        ({"backbone": "resnet20", "method": "deebert"}, "deebert"),
        ({"backbone": "resnet20", "placement": "sparse"}, "unknown placement='sparse'"),
        ({"backbone": "resnet20", "placement": [0, 2]}, "1-based"),
        ({"backbone": "resnet20", "placement": [4, 2]}, "strictly increasing"),
    ],
)
def test_validate_refuses_bad_arguments_without_building(kwargs: dict, message: str) -> None:
    from mexit.models import validate

    with pytest.raises(ValueError, match=re.escape(message)):
        validate(**kwargs)


def test_validate_accepts_what_build_builds() -> None:
    from mexit.models import validate

    validate("resnet20", placement="every", head="conv", head_kwargs={"num_layers": 2}, method="gpf")
    validate("timm/vit_tiny_patch16_224", placement=[2, 4], head="mlp")


def test_gpf_logits_and_imitation_loss_follow_the_documented_formulas() -> None:
    """Recomputed by hand from each IC's parts: swapping past and future, or taking cos for
    1 - cos, changes the numbers."""
    torch.manual_seed(0)
    model = build("resnet20", 3, in_chans=1, img_size=8, placement=[2, 4, 6], method="gpf",
                  method_kwargs={"state_dim": 16}).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
        blocks = model.forward_blocks(x)
        states = [ic.state(blocks[b - 1]) for ic, b in zip(model.ics, model.placement)]
        for k in range(3):
            past = sum(model.ics[j].project(states[j]) for j in range(k + 1))
            future = sum((model.ics[j].project(model.ics[j].imitator(states[k])) for j in range(k + 1, 3)), torch.zeros_like(past))
            gate = torch.stack([model.ics[j].gate(states[j]) for j in range(k + 1)]).mean(0)
            beta = torch.sigmoid(model.ics[k].balance(F.relu(gate)))
            assert torch.allclose(logits[k], beta * past + (1 - beta) * future, atol=1e-5), f"exit {k}"
        aux = model.auxiliary_loss(logits, torch.zeros(4, dtype=torch.long))
        per_k = [
            torch.stack([1 - F.cosine_similarity(model.ics[j].imitator(states[k]), states[j], dim=-1) for j in range(k + 1, 3)]).mean()
            for k in range(2)
        ]
        assert aux == pytest.approx(float(torch.stack(per_k).mean()), abs=1e-6)


@pytest.mark.parametrize(
    ("num_layers", "layout"),
    [  # (in channels, out channels, stride) of each conv of an IC on a 64-channel block: the authors' layouts
        (1, [(64, 32, 2)]),
        (2, [(64, 64, 2), (64, 32, 1)]),
        (3, [(64, 64, 2), (64, 64, 1), (64, 32, 1)]),
        (4, [(64, 32, 1), (32, 32, 1), (32, 32, 2), (32, 16, 1)]),
        (5, [(64, 32, 1), (32, 32, 1), (32, 32, 1), (32, 32, 1), (32, 32, 1)]),
    ],
)
def test_conv_heads_halve_channels_and_stride_as_the_authors_layouts(num_layers: int, layout: list[tuple[int, int, int]]) -> None:
    model = build("resnet20", 4, in_chans=1, img_size=8, placement=[8], head="conv", head_kwargs={"num_layers": num_layers})
    convs = [m for m in model.ics[0].modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == layout


def test_a_timm_deit_is_accepted_by_class_and_trains_in_every_regime(tmp_path) -> None:
    from mexit.config import load_config, regime_configs
    from mexit.store import RunStore

    overrides = ["model.backbone=timm/deit_tiny_patch16_224", "model.head=linear", "model.placement=[1, 2]",
                 "model.backbone_kwargs={patch_size: 4, depth: 3, embed_dim: 32, num_heads: 2}"]
    store = RunStore(tmp_path)
    runs = [train_or_load(store, c) for c in regime_configs(load_config("tiny", overrides), ["disjoint", "joint", "mixed"], [0])]
    for run in runs:
        assert run.logits("test").shape[0] == 3 and torch.isfinite(run.logits("test")).all()


def test_the_vit_1l_head_is_a_plain_linear_as_the_authors_and_its_layernorm_an_option() -> None:
    plain = build(VIT, 10, **VIT_KW, placement=[1])
    normed = build(VIT, 10, **{**VIT_KW, "head_kwargs": {"norm": True}}, placement=[1])
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.ics.modules())
    assert [type(m) for m in plain.ics[0].modules() if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))] == [torch.nn.Linear]
    assert any(isinstance(m, torch.nn.LayerNorm) for m in normed.ics.modules())


def test_select_samples_matches_boolean_indexing_and_keeps_the_memory_order() -> None:
    from mexit.models.multiexit import select_samples

    keep = torch.tensor([True, False, True, True, False])
    for x in (torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4).contiguous(memory_format=torch.channels_last), torch.randn(5, 7, 2)):
        chosen = select_samples(x, keep)
        assert torch.equal(chosen, x[keep])
        if x.dim() == 4:
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            assert chosen.is_contiguous(memory_format=layout)
