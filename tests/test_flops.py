"""Tests of mexit.flops: per-exit cumulative costs, parity with fvcore, and the authors' counting."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import Tensor, nn

from mexit.flops import AUTHORS_HANDLERS, COUNTINGS, counting_difference, exit_costs
from mexit.models import MultiExit, build
from mexit.models.methods import make_method


def fvcore_by_operator(model: MultiExit, shape: tuple[int, ...]) -> dict[str, int]:
    """fvcore's count per operator type of a full forward at batch 1 (one multiply-add = one 'flop')."""
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, *shape))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return dict(analysis.by_operator())


def test_costs_grow_with_depth_and_include_the_ics() -> None:
    model = build("resnet20", 10, in_chans=1, img_size=32)
    costs = exit_costs(model)
    assert len(costs.macs) == model.num_exits
    assert all(a < b for a, b in zip(costs.macs, costs.macs[1:]))
    assert costs.macs[-2] < costs.backbone_macs < costs.macs[-1]  # the final exit also paid for every IC
    assert costs.flops == tuple(2 * m for m in costs.macs)
    assert costs.backbone_flops == 2 * costs.backbone_macs
    # The pilot's numbers for this model: 4.9 M MACs at the first IC, 40.6 M at the final exit.
    assert round(costs.macs[0] / 1e5) == 49 and round(costs.macs[-1] / 1e5) == 406


def test_plain_backbone_has_one_exit_costing_the_backbone() -> None:
    plain = exit_costs(build("resnet20", 10, in_chans=1, placement=[]))
    with_ics = exit_costs(build("resnet20", 10, in_chans=1, placement=[3, 6]))
    assert plain.macs == (plain.backbone_macs,)
    assert with_ics.backbone_macs == plain.backbone_macs


def test_bigger_heads_cost_more_at_their_exit() -> None:
    pooled = exit_costs(build("resnet20", 10, in_chans=1, placement=[3]))
    conv = exit_costs(build("resnet20", 10, in_chans=1, placement=[3], head="conv", head_kwargs={"num_layers": 3}))
    assert conv.macs[0] > pooled.macs[0]
    assert conv.backbone_macs == pooled.backbone_macs


def test_to_frame_is_tidy_and_names_units() -> None:
    costs = exit_costs(build("resnet20", 10, in_chans=1, placement=[3, 6]))
    frame = costs.to_frame()
    assert list(frame.columns) == ["exit", "macs", "flops", "pct_of_backbone"]
    assert frame["exit"].tolist() == [0, 1, 2]
    assert frame["flops"].tolist() == [2 * m for m in costs.macs]
    assert frame["pct_of_backbone"].iloc[-1] > 100.0 > frame["pct_of_backbone"].iloc[0]
    assert "multiply-accumulate" in frame.attrs["units"]
    assert costs.counting == frame.attrs["counting"] == "macs"


def test_exit_costs_keeps_the_mode_and_takes_an_input_shape() -> None:
    model = build("resnet20", 10, in_chans=1, placement=[3])
    model.train()
    small = exit_costs(model)
    assert model.training
    large = exit_costs(model, input_shape=(1, 64, 64))
    assert 3.99 * small.backbone_macs < large.backbone_macs < 4 * small.backbone_macs  # all but the fc scale with area
    with pytest.raises(ValueError, match="channels, height, width"):
        exit_costs(model, input_shape=(32, 32))


def test_attention_is_counted_with_or_without_the_fused_kernel() -> None:
    model = build("timm/vit_tiny_patch16_224", 10, img_size=32, patch_size=8, head="linear", placement=[6])
    fused = exit_costs(model)
    for block in model.blocks:
        block.attn.fused_attn = False
    assert exit_costs(model) == fused
    tokens, dim, depth = 17, 192, 12
    attention = 2 * tokens * tokens * dim  # q k^T and attn v, per block
    linear = tokens * (4 * dim * dim + 8 * dim * dim)  # qkv + proj, MLP with ratio 4
    patch = 16 * 3 * 8 * 8 * dim
    assert fused.backbone_macs == patch + depth * (attention + linear) + dim * 10


# fvcore counts one multiply-add as one flop, like our MACs. Conv, linear and matmul counts must
# agree exactly. fvcore also counts normalisation layers (BatchNorm in eval mode: two per element;
# LayerNorm: five per element) and adaptive average pooling, which FlopCounterMode ignores; in these models
# that is under 2% of the total (1.1% for resnet20, whose narrow convs do few MACs per element).
# fvcore cannot see inside the fused attention kernel (it skips aten::scaled_dot_product_attention),
# so the ViT is traced with explicit attention matmuls.
MATRIX_OPS = {"conv", "linear", "matmul", "addmm", "bmm", "einsum"}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"in_chans": 1}),
        ("tv/resnet18", {"img_size": 64}),
        ("timm/vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "head": "linear"}),
        ("msdnet", {"img_size": 32}),
    ],
)
def test_parity_with_fvcore(name: str, kwargs: dict) -> None:
    model = build(name, 10, placement="every2", **kwargs)
    for block in model.blocks:
        if hasattr(block, "attn"):
            block.attn.fused_attn = False
    ours = exit_costs(model)
    theirs = fvcore_by_operator(model, model.input_shape)
    matrix = sum(count for op, count in theirs.items() if op in MATRIX_OPS)
    assert ours.macs[-1] == matrix  # a full forward runs every exit: the last cumulative cost
    assert ours.macs[-1] <= sum(theirs.values()) <= 1.02 * ours.macs[-1]


def test_the_authors_resnet50_placement_exits_at_their_costs() -> None:
    """ResNet-50 on TinyImageNet (64 x 64, 200 classes) with the authors' placement: ICs after
    1-based blocks 5, 7, .., 15 leave at about 32, 43, 58, 69, 80 and 95% of the backbone's MACs
    (their 0-based `place_at=[4, .., 14]`; read as 1-based, it would give 26, 37, 52, 63, 74, 89)."""
    from mexit.flops import exit_costs
    from mexit.models import build

    costs = exit_costs(build("resnet50", 200, img_size=64, placement="resnet50-paper", head="pooled"))
    percent = [round(100 * m / costs.backbone_macs) for m in costs.macs[:-1]]
    assert percent == [32, 43, 58, 69, 80, 95]


class _PlusGelu(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(x)


def _tiny_model() -> MultiExit:
    """Input (1, 4, 4); a 3x3 conv to 2 channels; block 1: x + gelu(x); block 2: ReLU, 2x2 max-pool.
    The IC after block 1: adaptive average pool, linear 2 -> 3, softmax; the final head: adaptive
    max pool, linear 2 -> 3."""
    stem = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    blocks = [_PlusGelu(), nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))]
    ic = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3), nn.Softmax(dim=1))
    final_head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    return MultiExit(stem, blocks, final_head, [ic], [1], make_method("sdn"), 3, (1, 4, 4))


def test_authors_counting_is_exact_on_a_tiny_model() -> None:
    model = _tiny_model()
    conv, linear = 2 * 16 * 9, 2 * 3  # multiply-adds: both countings
    plus_gelu = 32 + 32  # 1 per output element each; ReLU and max-pooling: no handler, 0
    ic = 32 + 2 * 3  # average pool: 1 per input element; softmax: 2 per output element
    final = 8  # adaptive max pool: 1 per input element
    macs = exit_costs(model)
    assert (macs.macs, macs.backbone_macs) == ((conv + linear, conv + 2 * linear), conv + linear)
    authors = exit_costs(model, counting="fvcore")
    assert authors.counting == "fvcore" and exit_costs(model, counting="authors") == authors  # the earlier spelling
    assert authors.macs == (conv + plus_gelu + ic + linear, conv + plus_gelu + ic + final + 2 * linear)
    assert authors.backbone_macs == conv + plus_gelu + final + linear


def test_authors_attention_counts_scaling_and_softmax() -> None:
    """The fused attention of a ViT under the authors' handler: per attention score, its two
    matrix products (q k^T, attn v) plus 1 for the scaling and 2 for the softmax."""
    model = build("timm/vit_tiny_patch16_224", 10, img_size=32, patch_size=8, head="linear", placement=[])
    for block in model.blocks:
        block.attn.fused_attn = True
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, 32, 32)).set_op_handle(**AUTHORS_HANDLERS)
    counts = analysis.by_operator()
    scores = 12 * 3 * 17 * 17  # blocks x heads x tokens^2
    assert counts["matmul"] == scores * (64 + 64)
    assert counts["div"] == scores and counts["softmax"] == 2 * scores


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"in_chans": 1}),
        ("timm/vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "head": "linear"}),
        ("msdnet", {"img_size": 32}),
    ],
)
def test_authors_counting_is_theirs_and_never_below_ours(name: str, kwargs: dict) -> None:
    model = build(name, 10, placement="every2", **kwargs)
    ours = exit_costs(model)
    authors = exit_costs(model, counting="fvcore")
    assert all(a > m for a, m in zip(authors.macs, ours.macs))
    assert authors.backbone_macs > ours.backbone_macs
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, *model.input_shape)).set_op_handle(**AUTHORS_HANDLERS)
    assert authors.macs[-1] == analysis.total()  # a full forward runs every exit


def test_counting_difference_per_exit() -> None:
    model = build("resnet20", 10, in_chans=1, placement=[3, 6])
    frame = counting_difference(model)
    assert list(frame.columns) == ["exit", "macs", "macs_pct", "fvcore", "fvcore_pct", "difference_pp"]
    for counting in COUNTINGS:
        costs = exit_costs(model, counting=counting)
        assert frame[counting].tolist() == list(costs.macs)
        assert frame[f"{counting}_pct"].tolist() == pytest.approx([100 * m / costs.backbone_macs for m in costs.macs])
    assert frame["difference_pp"].tolist() == pytest.approx((frame["fvcore_pct"] - frame["macs_pct"]).tolist())
    # The residual additions and BatchNorm of the backbone scale with it; the ICs' mixed pooling adds more.
    assert 0 < frame["difference_pp"].abs().max() < 1
    assert "percentage points" in frame.attrs["units"]


def test_unknown_counting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"counting must be one of \('macs', 'fvcore'\), got 'flops'"):
        exit_costs(build("resnet20", 10, in_chans=1, placement=[]), counting="flops")
