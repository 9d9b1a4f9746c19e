"""Any timm or torchvision model split generically: every split reproduces its model, gives the
blocks of its stages, and everything downstream (exits, early exit, MACs, weights, keys) works."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from mexit.config import RunConfig, model_identity
from mexit.evaluate import sweep
from mexit.flops import _count_macs, exit_costs
from mexit.models import build
from mexit.models.generic import SplitError, split_model
from mexit.store import phase_keys
from mexit.study import make_study

from floats import separated_thresholds

SWIN = {"window_size": 2, "depths": (2, 2, 2), "num_heads": (2, 4, 8), "embed_dim": 16}
"""A Swin small enough for 16 x 16 images: 4 x 4 patches, windows of 2, three stages."""

TIMM_CASES = [  # (model, constructor keywords, image size, blocks, features, layout)
    ("resnet10t", {}, 32, 4, "map", "nchw"),
    ("convnext_atto", {}, 32, 12, "map", "nchw"),
    ("efficientnet_b0", {}, 32, 16, "map", "nchw"),
    ("mobilenetv3_small_100", {}, 32, 12, "map", "nchw"),
    ("regnetx_002", {}, 32, 13, "map", "nchw"),
    ("swin_tiny_patch4_window7_224", {**SWIN, "img_size": 16}, 16, 6, "map", "nhwc"),
    ("mixer_s16_224", {"img_size": 32}, 32, 8, "tokens", "nchw"),
    ("poolformer_s12", {}, 32, 12, "map", "nchw"),
    ("ghostnet_100", {}, 32, 17, "map", "nchw"),
    ("edgenext_xx_small", {}, 32, 12, "map", "nchw"),
    ("coatnet_nano_rw_224", {"img_size": 32}, 32, 16, "map", "nchw"),
]
TV_CASES = [
    ("resnet18", {}, 32, 8, "map", "nchw"),
    ("convnext_tiny", {}, 32, 18, "map", "nchw"),
    ("efficientnet_b0", {}, 32, 16, "map", "nchw"),
    ("mobilenet_v3_small", {}, 32, 11, "map", "nchw"),
    ("regnet_x_400mf", {}, 32, 22, "map", "nchw"),
    ("swin_t", {}, 32, 12, "map", "nhwc"),
    ("efficientnet_v2_s", {}, 32, 40, "map", "nchw"),  # the paper profile's transfer rows
    ("swin_v2_s", {}, 32, 24, "map", "nhwc"),
]


def _library(library: str, arch: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    if library == "timm":
        return timm.create_model(arch, num_classes=5, **kwargs)
    return torchvision.models.get_model(arch, weights=None, num_classes=5, **kwargs)


@pytest.mark.parametrize(
    ("library", "arch", "kwargs", "size", "blocks", "features", "layout"),
    [("timm", *case) for case in TIMM_CASES] + [("tv", *case) for case in TV_CASES],
    ids=[f"timm/{c[0]}" for c in TIMM_CASES] + [f"tv/{c[0]}" for c in TV_CASES],
)
def test_a_split_reproduces_its_model_and_cuts_it_at_its_blocks(library, arch, kwargs, size, blocks, features, layout) -> None:
    model = _library(library, arch, kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        split = split_model(model, (3, size, size), f"{library}/{arch}")
        h = split.stem(x)
        for block in split.blocks:
            h = block(h)
        got = split.final_head(h)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert (len(split.blocks), split.features, split.layout) == (blocks, features, layout)
    prefix = f"{'timm' if library == 'timm' else 'tv'}/{arch}"
    multi = build(prefix, 5, img_size=size, placement="every", **({k: v for k, v in kwargs.items() if k != "img_size"}))
    assert len(multi.blocks) == blocks and multi.num_exits == blocks  # an IC after every block but the last
    with torch.no_grad():  # the split's cost is the model's: no op counted twice or missed at a cut
        assert exit_costs(multi).backbone_macs == _count_macs(lambda: model(torch.zeros(1, 3, size, size)))
    assert all(out.shape == (2, 5) for out in multi(x))


@pytest.mark.parametrize(("arch", "stage_ends"), [("convnext_atto", [2, 4, 10, 12]), ("resnet18", [None, 2, 4, 6, 8]), ("efficientnet_b0", [1, 3, 5, 11, 16])])
def test_an_ic_reads_the_tensor_its_block_gives_in_the_model_itself(arch: str, stage_ends: list[int | None]) -> None:
    """The split's block outputs are the model's own intermediates: each stage's output, as timm's
    forward_intermediates gives it, is the output of that stage's last block and of no other (the
    weights moved off their initialisation first: ConvNeXt's blocks start near the identity, so at
    initialisation every block of a stage would agree; ResNet's first intermediate is its stem's, no block's)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        stages = model.forward_intermediates(x, intermediates_only=True)
        split = split_model(model, (3, 32, 32), f"timm/{arch}")
        outputs, h = [], split.stem(x)
        for block in split.blocks:
            h = block(h)
            outputs.append(h)
    for stage, end in zip(stages, stage_ends, strict=True):
        same = [i + 1 for i, out in enumerate(outputs)
                if out.shape == stage.shape and torch.allclose(out, stage, rtol=1e-4, atol=1e-5 * float(stage.abs().max()))]
        assert same == ([] if end is None else [end])


def test_a_model_whose_forward_is_more_than_its_children_in_order_is_refused() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), _Unit()) for _ in range(2)))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return self.fc(torch.flatten(self.pool(self.blocks(h) + h), 1))  # a skip the children's order does not show

    with pytest.raises(SplitError, match=r"backbone='mine': stem, 2 blocks and head composed do not reproduce the model's output"):
        split_model(Residual(), (3, 8, 8), "mine")
    with pytest.raises(ValueError, match=r"backbone='tv/vgg11': no blocks found among its children.*Verified families: timm resnet"):
        build("tv/vgg11", 5, img_size=32)
    with pytest.raises(ValueError, match=r"backbone='timm/fastvit_t8': its children, run in the order its forward calls them"):
        build("timm/fastvit_t8", 5, img_size=32)  # a forward that is more than its children in order


def test_a_term_whose_weights_start_at_zero_cannot_hide_from_the_check() -> None:
    """A zero-initialised gate, classifier or class token adds nothing at initialisation: a split
    that dropped its term would reproduce the output there, and the term would grow in training."""
    from mexit.models.backbones import TorchvisionViTClassifier, TorchvisionViTEmbedding, split_torchvision_vit
    from mexit.models.generic import nonzero_parameters, verify_split
    from mexit.models.parts import BackboneParts

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.blocks = nn.Sequential(_Unit(), _Unit())
            self.gate = nn.Parameter(torch.zeros(1))  # a layer-scale gate at its usual start
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            return self.fc(torch.flatten(self.pool(self.blocks(h) + self.gate * h), 1))  # a gated skip

    torch.manual_seed(0)
    gated = Gated()
    with pytest.raises(SplitError, match=r"backbone='gated': stem, 2 blocks and head composed do not reproduce"):
        split_model(gated, (3, 8, 8), "gated")
    assert not gated.gate.any()  # zero again after the check
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
    assert not vit.heads.head.weight.any() and not vit.class_token.any()  # torchvision starts both at zero
    wrong = BackboneParts(TorchvisionViTEmbedding(vit), list(vit.encoder.layers)[:2], TorchvisionViTClassifier(vit), "tokens", "token", 1)
    with nonzero_parameters(vit), pytest.raises(SplitError, match=r"backbone='tv/vit_small': stem, 2 blocks and head composed do not reproduce"):
        verify_split(vit, wrong, (3, 16, 16), "tv/vit_small")  # with the zeros, any split's output is 0 and agrees
    assert len(split_torchvision_vit(vit, (3, 16, 16), "tv/vit_small").blocks) == 3
    assert not vit.heads.head.weight.any() and not vit.class_token.any()  # the model's own weights untouched


def test_a_torchvision_vit_is_split_at_its_encoder_layers_and_verified() -> None:
    from mexit.models.backbones import split_torchvision_vit
    from mexit.models.generic import verify_split
    from mexit.models.parts import BackboneParts

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts its classifier at zero: every split would agree
    x = torch.randn(2, 3, 16, 16)
    split = split_torchvision_vit(vit, (3, 16, 16), "tv/vit_small")
    with torch.no_grad():
        h = split.stem(x)
        for block in split.blocks:
            h = block(h)
        expected = vit(x)
        assert expected.abs().max() > 0.1 and torch.allclose(split.final_head(h), expected, atol=1e-5)
    assert (len(split.blocks), split.features, split.token_pool, split.num_prefix_tokens) == (3, "tokens", "token", 1)
    assert h.shape == (2, 1 + 16, 16)  # the class token and 4 x 4 patches
    wrong = BackboneParts(split.stem, split.blocks[:2], split.final_head, "tokens")
    with pytest.raises(SplitError, match=r"backbone='tv/vit_small': stem, 2 blocks and head composed do not reproduce"):
        verify_split(vit, wrong, (3, 16, 16), "tv/vit_small")
    multi = build("tv/vit_b_16", 5, img_size=32, placement="every")  # the published architecture, random weights, 2 x 2 patches
    assert len(multi.blocks) == 12 and multi.num_exits == 12
    assert all(out.shape == (2, 5) for out in multi(torch.randn(2, 3, 32, 32)))
    assert len(list(multi.parameters())) == len({id(p) for p in multi.parameters()})
    with pytest.raises(ValueError, match=r"patch size 16 does not divide the image size 40"):
        build("tv/vit_b_16", 5, img_size=40)


class _Unit(nn.Module):
    """A module of the model's own class (not a torch.nn layer): a block."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.scale


@pytest.mark.parametrize(("name", "kwargs", "size"), [("timm/convnext_atto", {}, 32), ("timm/swin_tiny_patch4_window7_224", SWIN, 16)])
def test_early_exit_on_a_generic_split_equals_the_offline_sweep(name: str, kwargs: dict, size: int) -> None:
    torch.manual_seed(0)
    model = build(name, 10, img_size=size, placement=[2, 4], **kwargs).eval()
    x = torch.randn(48, 3, size, size)
    with torch.no_grad():
        logits = torch.stack(model(x)).numpy()
    labels = np.random.default_rng(0).integers(0, 10, len(x))
    confidence = torch.softmax(torch.from_numpy(logits[:-1]), -1).amax(-1).numpy().ravel()
    for threshold in separated_thresholds(confidence, (0.2, 0.5, 0.8)):  # no sample's confidence at a threshold
        row = sweep(logits, labels, [1.0, 2.0, 3.0], 3.0, thresholds=[threshold]).iloc[0]
        with torch.no_grad():
            result = model.early_exit(x, threshold)
        shares = np.bincount(result.exit_index.numpy(), minlength=3) / len(x)
        np.testing.assert_allclose([row[f"exit_share_{e}"] for e in range(3)], shares, atol=1e-12)
        assert row["accuracy"] == pytest.approx(100 * np.mean(result.preds.numpy() == labels))


def test_exit_costs_of_a_generic_split_rise_to_the_full_forward() -> None:
    model = build("tv/efficientnet_b0", 10, img_size=32, placement="every4")
    costs = exit_costs(model)
    assert list(costs.macs) == sorted(costs.macs) and costs.macs[-1] > costs.backbone_macs > costs.macs[0]


def test_pretrained_weights_offline_are_refused_before_anything_is_built() -> None:
    message = r"model.pretrained: the weights convnext_atto.d2_in1k of backbone='timm/convnext_atto' are not on this machine and it is offline.*model.checkpoint"
    with pytest.raises(ValueError, match=message):
        build("timm/convnext_atto", 10, pretrained=True)
    config = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "pretrained": True}})
    config.validate()  # the weights are named (the key holds their tag) ...
    assert model_identity(config.model)["pretrained"] == "convnext_atto.d2_in1k"
    scratch = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto"}, "train": {"regime": "mixed"}})
    weighted = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "pretrained": True}, "train": {"regime": "mixed"}})
    assert phase_keys(weighted)[0] != phase_keys(scratch)[0]  # a stored P1 from scratch never stands in for a fine-tuned one
    row = {"label": "weights", "config": "mnist5k-convnext-quick", "overrides": ["model.pretrained=true"]}
    with pytest.raises(ValueError, match=message):
        make_study(rows=[row], seeds=[0, 1], regimes=["joint", "mixed"], runs_root=None)  # ... and a page checks they are here before it trains
    assert make_study(rows=[row], seeds=[0, 1], regimes=["joint", "mixed"], runs_root=None, require_data=False)  # a plan for a GPU machine does not
    with pytest.raises(ValueError, match=r"model.pretrained: backbone='resnet20' \(small-image ResNet\) has no published weights"):
        build("resnet20", 10, pretrained=True)


def test_a_transfer_start_from_a_local_weight_file_is_keyed_by_its_contents(tmp_path) -> None:
    native = _library("timm", "convnext_atto", {}).eval()
    path = tmp_path / "convnext_atto.pth"
    torch.save(native.state_dict(), path)
    scratch = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto"}})
    transfer = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "checkpoint": str(path)}})
    before = transfer.key()
    assert before != scratch.key()
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(path.read_bytes())
    assert RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "checkpoint": str(moved)}}).key() == before
    model = build("timm/convnext_atto", 3, img_size=32, checkpoint=str(path), placement=[]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the body is the file's; the classifier of 3 classes is fresh
        assert torch.allclose(model.forward_blocks(x)[-1], native.forward_features(x), atol=1e-5)
    mixed = RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto", "checkpoint": str(path)}, "train": {"regime": "mixed"}})
    p1_before = phase_keys(mixed)[0]
    assert p1_before != phase_keys(RunConfig.from_dict({"model": {"backbone": "timm/convnext_atto"}, "train": {"regime": "mixed"}}))[0]
    torch.save({k: v + 1 for k, v in native.state_dict().items()}, path)
    assert transfer.key() != before  # the same path, other weights: another run
    assert phase_keys(mixed)[0] != p1_before  # and another P1: phases are keyed by the file's contents too


OWN_NETWORKS = '''"""Networks of a researcher's own, for the py/ backbone tests."""
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x):
        return x + self.norm(self.conv(x)).relu()


class Net(nn.Module):
    def __init__(self, num_classes, in_chans, width):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(4)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class Patchify(nn.Module):
    def __init__(self, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 4, stride=4)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Mix(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(self.norm(x))


class MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(1)


class Tokens(nn.Module):
    def __init__(self, num_classes, in_chans, dim):
        super().__init__()
        self.patchify = Patchify(in_chans, dim)
        self.blocks = nn.Sequential(*(Mix(dim) for _ in range(3)))
        self.norm = nn.LayerNorm(dim)
        self.pool = MeanTokens()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.norm(self.blocks(self.patchify(x)))))


def net(num_classes, in_chans, img_size, width=8):
    return Net(num_classes, in_chans, width)


def tokens(num_classes, in_chans, img_size, dim):  # no default: its features are found only when it is built
    return Tokens(num_classes, in_chans, dim)


def not_a_network(num_classes, in_chans, img_size):
    return 3


class Named(nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.net = Net(num_classes, in_chans, 8)

    def forward(self, x):
        return {"logits": self.net(x)}


def named_outputs(num_classes, in_chans, img_size):  # as many libraries' models return
    return Named(num_classes, in_chans)
'''


def test_a_network_of_your_own_is_built_split_verified_and_keyed_by_its_code(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "own_nets.py"
    module.write_text(OWN_NETWORKS)
    (tmp_path / "own_space").mkdir()  # a namespace package: a folder without __init__.py
    (tmp_path / "own_space" / "nets.py").write_text(OWN_NETWORKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    model = build("py/own_nets:net", 5, in_chans=1, img_size=8, placement=[1, 2, 3], width=6)
    assert len(model.blocks) == 4 and model.num_exits == 4
    assert all(out.shape == (2, 5) for out in model(torch.randn(2, 1, 8, 8)))
    assert len(build("py/own_space.nets:net", 5, img_size=16).blocks) == 4
    for head in (None, "linear"):  # tokens, found with the run's keyword arguments, so a token head fits
        seen = build("py/own_nets:tokens", 5, img_size=16, placement="every", head=head, dim=8)
        assert len(seen.blocks) == 3 and all(out.shape == (2, 5) for out in seen(torch.randn(2, 3, 16, 16)))
    for name, message in [
        ("py/own_nets", r"is named 'py/<module>:<function>'"),
        ("py/no_such_module_here:net", r"no module 'no_such_module_here' is importable here; put it on PYTHONPATH"),
        ("py/own_nets:missing", r"module 'own_nets' has no function 'missing'"),
        ("py/own_nets:not_a_network", r"not_a_network returned a int, not a torch.nn.Module"),
        ("py/own_nets:named_outputs", r"its forward returns a dict, not a tensor of logits \(N, classes\): wrap the model"),
    ]:
        with pytest.raises(ValueError, match=f"backbone={name!r}.*" + message):
            build(name, 5, img_size=8)
    rows = [{"label": "own", "config": "tiny", "overrides": ["model.backbone=py/no_such_module_here:net"]}]
    with pytest.raises(ValueError, match=r"no module 'no_such_module_here' is importable here"):
        make_study(rows=rows, seeds=[0], regimes=["joint"], runs_root=str(tmp_path))  # refused before anything trains

    def key() -> str:
        return RunConfig.from_dict({"model": {"backbone": "py/own_nets:net", "backbone_kwargs": {"width": 6}}}).key()

    before = key()
    module.write_text(OWN_NETWORKS.replace('"""Networks of', '"""Docs of'))  # documentation only: the same runs
    assert key() == before
    module.write_text(OWN_NETWORKS.replace("for _ in range(4)", "for _ in range(5)"))  # another network: new runs
    assert key() != before
    with pytest.raises(ValueError, match=r"module 'own_nets' changed on disk since this process imported it; restart"):
        build("py/own_nets:net", 5, img_size=8)  # this process holds the old network: it would train it under the new key


def test_published_weights_keep_their_stem_on_grey_images_and_a_classifier_that_is_no_linear_is_refused() -> None:
    from mexit.models.backbones import _adapt_first_conv, _fresh_classifier

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    rgb = model.conv1.weight.detach().clone()
    _adapt_first_conv(model, 1, keep_weights=True)  # the published stem, summed over the colours
    assert model.conv1.in_channels == 1 and torch.allclose(model.conv1.weight, rgb.sum(1, keepdim=True))
    _adapt_first_conv(model, 6, keep_weights=False)  # random weights: a fresh He-initialised stem
    assert model.conv1.in_channels == 6 and not torch.equal(model.conv1.weight[:, :1], rgb.sum(1, keepdim=True))
    with pytest.raises(ValueError, match=r"backbone='tv/squeezenet1_0': its classifier is not a torch.nn.Linear"):
        _fresh_classifier(torchvision.models.squeezenet1_0(), 5, "tv/squeezenet1_0")
