"""The four analyses on cases with known answers, on ResNet and ViT models, and on two stored tiny runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mexit.pipeline import train_or_load, trained_model
from mexit.analysis import (
    barrier,
    bezier_path,
    block_mutual_information,
    block_ranks,
    block_representations,
    evaluate_exits,
    gradient_dominance,
    input_information,
    linear_path,
    mutual_information,
    numerical_rank,
    recompute_batchnorm,
    training_probe,
)
from mexit.data.loading import sample_indices
from mexit.models import build
from mexit.regimes import multi_exit_loss


def _resnet(seed: int = 0, placement: list[int] | None = None) -> nn.Module:
    torch.manual_seed(seed)
    return build("resnet20", 10, in_chans=1, img_size=8, placement=[3, 6] if placement is None else placement)


def _vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(
        "timm/vit_tiny_patch16_224", 10, in_chans=1, img_size=8, patch_size=4, head="linear",
        placement=[1, 2], depth=3, embed_dim=32, num_heads=2,
    )


def _images(count: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 1, 8, 8, generator=generator), torch.arange(count) % 10)


def _batch(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _images(count).tensors
    return images, labels


# ---------------------------------------------------------------- gradient dominance


def test_dominance_shares_sum_to_one_and_a_lone_exit_has_share_and_cosine_one() -> None:
    table = gradient_dominance(_resnet(), *_batch())
    assert list(table.columns) == [
        "block", "exit", "exit_block", "weight", "grad_norm", "share", "cosine", "dominant",
    ]
    assert np.allclose(table.weight, 1 / 3)
    assert np.allclose(table.groupby("block")["share"].sum(), 1.0)
    assert (table.groupby("block")["dominant"].sum() == 1).all()
    assert set(table[table.block <= 3].exit) == {0, 1, 2}  # IC 0 reads block 3: it reaches blocks 1-3
    assert set(table[(table.block > 3) & (table.block <= 6)].exit) == {1, 2}
    lone = table[table.block > 6]  # only the final exit reaches blocks 7-9
    assert (lone.exit == 2).all() and np.allclose(lone.share, 1) and np.allclose(lone.cosine, 1)
    single = gradient_dominance(_resnet(placement=[]), *_batch())
    assert len(single) == 9 and np.allclose(single.share, 1) and np.allclose(single.cosine, 1)


def test_dominance_matches_backprop_of_each_exit_and_of_the_uniform_mean() -> None:
    model = _resnet()
    images, labels = _batch()
    table = gradient_dominance(model, images, labels).set_index(["block", "exit"])
    model.eval()
    logits = model(images)
    losses = [F.cross_entropy(out, labels) for out in logits]
    block = list(model.blocks[1].parameters())
    own = torch.cat([g.flatten() for g in torch.autograd.grad(losses[0], block, retain_graph=True)])
    total = torch.cat([g.flatten() for g in torch.autograd.grad(torch.stack(losses).mean(), block)])
    assert table.loc[(2, 0), "grad_norm"] == pytest.approx(float(own.norm()), rel=1e-4)
    assert table.loc[(2, 0), "cosine"] == pytest.approx(float(F.cosine_similarity(own, total, dim=0)), abs=1e-4)
    norms = table.loc[2, "grad_norm"]
    assert table.loc[(2, 0), "share"] == pytest.approx(norms[0] / norms.sum(), rel=1e-6)


def test_dominance_total_is_the_gradient_of_the_weighted_loss() -> None:
    model = _resnet()
    images, labels = _batch()
    weights = torch.tensor([1.0, 2.0, 3.0]) / 6  # linear weights, as PBEE and GPF train
    table = gradient_dominance(model, images, labels, weights=weights).set_index(["block", "exit"])
    model.eval()
    logits = model(images)
    total, _ = multi_exit_loss(logits, labels, range(3), weights)
    block = list(model.blocks[1].parameters())
    own = torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(logits[0], labels), block, retain_graph=True)])
    trained = torch.cat([g.flatten() for g in torch.autograd.grad(total, block)])
    assert table.loc[(2, 0), "cosine"] == pytest.approx(float(F.cosine_similarity(own, trained, dim=0)), abs=1e-4)
    assert table.loc[(2, 2), "weight"] == pytest.approx(0.5)
    weighted = table.loc[2, "grad_norm"] * weights.double().numpy()
    assert table.loc[(2, 0), "share"] == pytest.approx(weighted[0] / weighted.sum(), rel=1e-6)


def test_dominance_zero_weight_exits_keep_their_rows_with_share_zero() -> None:
    table = gradient_dominance(_resnet(), *_batch(), weights=torch.tensor([0.0, 0.0, 1.0]))
    final = table[table.exit == 2]
    assert np.allclose(final.share, 1) and np.allclose(final.cosine, 1) and final.dominant.all()
    left_out = table[table.exit != 2]
    assert np.allclose(left_out.share, 0) and (left_out.grad_norm > 0).all() and not left_out.dominant.any()
    first_only = gradient_dominance(_resnet(), *_batch(), weights=[1.0, 0.0, 0.0])
    early, late = first_only[first_only.block <= 3], first_only[first_only.block > 3]
    assert np.allclose(early[early.exit == 0].share, 1) and early[early.exit == 0].dominant.all()
    assert late.share.isna().all() and late.cosine.isna().all() and not late.dominant.any()  # no weighted exit reaches
    for bad in ([1.0, 1.0], [0.0, 0.0, 0.0], [1.0, -1.0, 1.0], torch.ones(1, 3)):
        with pytest.raises(ValueError, match="weights must be 3"):
            gradient_dominance(_resnet(), *_batch(), weights=bad)


def test_dominance_leaves_model_and_random_state_untouched() -> None:
    model = _resnet()
    model.train()
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    table = gradient_dominance(model, *_batch())
    assert table[table.block == 1].grad_norm.gt(0).all()  # frozen blocks are measured too
    assert model.training and all(not p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_training_probe_is_seeded_uses_the_given_weights_and_tags_rows_with_the_step() -> None:
    model = _resnet()
    dataset = _images(300)
    uniform = torch.full((3,), 1 / 3)
    rows = training_probe(dataset, seed=3, probe_size=32)(model, 7, uniform)
    again = training_probe(dataset, seed=3, probe_size=32)(model, 7, uniform)
    other = training_probe(dataset, seed=4, probe_size=32)(model, 7, uniform)
    assert rows == again and rows != other
    assert len(rows) == 3 * 3 + 3 * 2 + 3 and all(row["step"] == 7 for row in rows)
    assert set(rows[0]) == {"step", "block", "exit", "exit_block", "weight", "grad_norm", "share", "cosine", "dominant"}
    final_only = training_probe(dataset, seed=3, probe_size=32)(model, 8, torch.tensor([0.0, 0.0, 1.0]))
    assert all(row["share"] == (1.0 if row["exit"] == 2 else 0.0) for row in final_only)
    with pytest.raises(ValueError, match="probe_size"):
        training_probe(dataset, seed=0, probe_size=1)


# ---------------------------------------------------------------- mode connectivity


def test_recompute_batchnorm_is_the_exact_average_over_the_batches() -> None:
    norm = nn.BatchNorm1d(3, momentum=0.3)
    data = torch.randn(40, 3) * 2 + 5
    recompute_batchnorm(nn.Sequential(norm), DataLoader(TensorDataset(data, torch.zeros(40)), batch_size=10))
    batch_vars = torch.stack([chunk.var(0) for chunk in data.split(10)])
    assert torch.allclose(norm.running_mean, data.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, batch_vars.mean(0), atol=1e-5)
    assert norm.momentum == 0.3 and not norm.training


def test_path_from_a_model_to_itself_is_flat_with_zero_barrier() -> None:
    model = _resnet()
    path = linear_path(model, model, _images(64, seed=1), _images(50, seed=2), points=4, bn_batches=2, batch_size=16)
    assert list(path.columns) == ["alpha", "exit", "loss", "accuracy"] and len(path) == 4 * 3
    for _, curve in path.groupby("exit"):
        assert np.allclose(curve.loss, curve.loss.iloc[0], atol=1e-5)
        assert np.allclose(curve.accuracy, curve.accuracy.iloc[0])
    assert np.allclose(barrier(path)[["loss_barrier", "error_barrier"]], 0, atol=1e-5)


def test_path_end_points_are_the_models_with_recomputed_batchnorm() -> None:
    a, b = _resnet(0), _resnet(1)
    stored_b = {k: v.clone() for k, v in b.state_dict().items()}
    train, test = _images(64, seed=1), _images(50, seed=2)
    path = linear_path(a, b, train, test, points=3, bn_batches=2, batch_size=16)
    assert all(torch.equal(stored_b[k], v) for k, v in b.state_dict().items())
    bn_batches = torch.utils.data.Subset(train, sample_indices(64, 32, 0).tolist())
    recompute_batchnorm(b, DataLoader(bn_batches, batch_size=16))
    end = evaluate_exits(b, test, batch_size=16)
    assert np.allclose(path[path.alpha == 1.0].loss, end.loss, atol=1e-5)
    assert not np.allclose(path[path.alpha == 0.0].loss, end.loss)


def test_evaluate_exits_is_each_exits_loss_and_accuracy_in_eval_mode() -> None:
    model = _resnet()
    model.train()
    test = _images(50, seed=2)
    table = evaluate_exits(model, test, batch_size=16)
    assert model.training and list(table.columns) == ["exit", "loss", "accuracy"]
    model.eval()
    images, labels = test.tensors
    with torch.no_grad():
        logits = model(images)
    assert np.allclose(table.loss, [F.cross_entropy(out, labels).item() for out in logits], atol=1e-5)
    assert np.allclose(table.accuracy, [100 * (out.argmax(1) == labels).float().mean().item() for out in logits])
    with pytest.raises(ValueError, match="empty"):
        evaluate_exits(model, _images(0))


def test_bezier_curve_starts_as_the_linear_path_and_training_lowers_its_loss() -> None:
    a, b = _resnet(0), _resnet(1)
    data = _images(64)
    settings = {"points": 5, "bn_batches": 2, "batch_size": 32}
    line = linear_path(a, b, data, data, **settings)
    untrained = bezier_path(a, b, data, data, steps=0, **settings)
    assert np.allclose(untrained.loss, line.loss, atol=1e-4)
    curve = bezier_path(a, b, data, data, steps=20, lr=1e-3, **settings)
    inner = line.alpha.between(0.1, 0.9)
    assert np.allclose(curve[~inner].loss, line[~inner].loss, atol=1e-5)  # the end points stay put
    assert curve[inner].loss.mean() < line[inner].loss.mean() - 0.2
    with pytest.raises(ValueError, match="steps"):
        bezier_path(a, b, data, data, steps=-1)


def test_a_bezier_fit_that_makes_the_curve_worse_returns_the_line_it_started_from() -> None:
    """Adam at a rate far too large for the weights throws the control point away from the line;
    the fit keeps the curve of lowest training loss it passed through, here the line itself."""
    a, b = _resnet(0), _resnet(1)
    data = _images(64)
    settings = {"points": 5, "bn_batches": 2, "batch_size": 32}
    line = linear_path(a, b, data, data, **settings)
    thrown = bezier_path(a, b, data, data, steps=5, lr=10.0, **settings)
    assert np.allclose(thrown.loss, line.loss, atol=1e-4)


def test_barrier_of_a_known_path() -> None:
    path = pd.DataFrame(
        {"alpha": [0.0, 0.5, 1.0], "exit": [0, 0, 0], "loss": [1.0, 3.0, 2.0], "accuracy": [90.0, 50.0, 80.0]}
    )
    row = barrier(path).iloc[0]
    assert row.loss_barrier == pytest.approx(1.5) and row.loss_barrier_alpha == 0.5
    assert row.error_barrier == pytest.approx(35.0)
    with pytest.raises(ValueError, match="alpha=0 to alpha=1"):
        barrier(path[path.alpha < 1])
    with pytest.raises(ValueError, match="lacks columns"):
        barrier(path.drop(columns="loss"))


def test_path_rejects_bad_arguments() -> None:
    data = _images(16)
    with pytest.raises(ValueError, match="architecture"):
        linear_path(_resnet(placement=[3]), _resnet(), data, data)
    with pytest.raises(ValueError, match="points"):
        linear_path(_resnet(), _resnet(), data, data, points=1)


# ---------------------------------------------------------------- numerical rank


def _low_rank(samples: int, features: int, rank: int, noise: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(samples, rank, generator=generator, dtype=torch.float64)
    right = torch.randn(rank, features, generator=generator, dtype=torch.float64)
    return left @ right + noise * torch.randn(samples, features, generator=generator, dtype=torch.float64)


def test_rank_of_a_constructed_matrix_with_tiny_noise() -> None:
    result = numerical_rank(_low_rank(200, 50, 7, noise=1e-7))
    assert result.rank == 7 and result.max_rank == 50 and result.samples == 200
    assert result.spectrum[0] == 1 and bool((result.spectrum[:-1] >= result.spectrum[1:]).all())
    # noise singular values ~0.1 of the largest: eigenvalue ratio ~1e-2, above the threshold, counts
    assert numerical_rank(_low_rank(200, 50, 7, noise=1.0)).rank == 50
    # at ~0.006 of the largest (ratio ~4e-5) it does not: the rule is on eigenvalues, not singular values
    assert numerical_rank(_low_rank(200, 50, 7, noise=1e-1)).rank == 7


def test_rank_threshold_is_on_covariance_eigenvalues() -> None:
    # centred columns with singular values 1 and 0.02: eigenvalue ratio 4e-4 < 1e-3 -> rank 1
    # (a threshold of 1e-3 on singular values would count both); 0.04 -> ratio 1.6e-3 -> rank 2
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    other = torch.tensor([1.0, 1.0, -1.0, -1.0])
    for second, expected in ((0.02, 1), (0.04, 2)):
        matrix = torch.stack([signs / 2, second * other / 2], dim=1)
        result = numerical_rank(matrix)
        assert result.singular_values.tolist() == pytest.approx([1.0, second])
        assert result.rank == expected and result.eig_threshold == 1e-3


def test_rank_centres_features_and_reports_subsampling() -> None:
    matrix = _low_rank(200, 50, 7, noise=0.0) + 100.0  # a large common offset would add a direction
    assert numerical_rank(matrix).rank == 7
    assert numerical_rank(torch.ones(20, 5)).rank == 0
    images = torch.randn(30, 2, 4, 4)  # [samples, ...] is flattened per sample
    full = numerical_rank(images)
    assert (full.features_used, full.features_total, full.rank) == (32, 32, 29)
    sub = numerical_rank(images, max_features=10, seed=1)
    assert (sub.features_used, sub.features_total, sub.rank, sub.max_rank) == (10, 32, 10, 10)
    assert torch.equal(sub.singular_values, numerical_rank(images, max_features=10, seed=1).singular_values)
    with pytest.raises(ValueError, match="eig_threshold"):
        numerical_rank(images, eig_threshold=1.5)
    with pytest.raises(ValueError, match="samples >= 2"):
        numerical_rank(torch.randn(5))


def test_block_representations_are_the_flattened_block_outputs() -> None:
    model = _resnet()
    model.train()
    data = _images(40)
    reps = block_representations(model, data, samples=100, max_features=300, batch_size=16)
    assert model.training and reps.samples == 40 and len(reps.blocks) == 9
    first = reps.blocks[0]
    assert (first.block, first.features_total, first.features_used) == (1, 16 * 8 * 8, 300)
    assert reps.blocks[-1].features_used == reps.blocks[-1].features_total == 64 * 2 * 2
    model.eval()
    images = torch.stack([data[int(i)][0] for i in sample_indices(40, 40, 0)])
    with torch.no_grad():
        last = model.forward_blocks(images)[-1].flatten(1)
    assert torch.allclose(reps.blocks[-1].features, last, atol=1e-5)


def test_effective_rank_of_equal_and_unequal_directions() -> None:
    for r in (1, 3, 7):
        signs = torch.cat([torch.eye(r, 10), -torch.eye(r, 10)])  # centred, r orthogonal directions of equal size
        result = numerical_rank(signs)
        assert result.rank == r and result.effective_rank == pytest.approx(r, rel=1e-9)
    skewed = numerical_rank(torch.cat([torch.eye(2, 10), -torch.eye(2, 10)]) * torch.tensor([1.0, 0.05] + [0.0] * 8))
    assert skewed.rank == 2 and 1 < skewed.effective_rank < 1.25  # a faint second direction barely counts
    assert numerical_rank(torch.ones(20, 5)).effective_rank == 0.0


def test_block_ranks_table() -> None:
    table = block_ranks(_resnet(), _images(60), samples=50, max_features=128)
    assert list(table.columns) == [
        "block", "rank", "effective_rank", "max_rank", "features_used", "features_total", "samples", "eig_threshold",
    ]
    assert list(table.block) == list(range(1, 10)) and (table.samples == 50).all()
    assert (table["rank"] <= table.max_rank).all() and (table.features_used <= 128).all()
    assert ((table.effective_rank > 1) & (table.effective_rank <= table.max_rank)).all()
    default = block_ranks(_resnet(), _images(60), samples=50)
    assert (default.features_used == 25).all() and (default.max_rank == 25).all()  # half the samples


# ---------------------------------------------------------------- mutual information


def _balanced_labels(samples: int, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randperm(samples, generator=torch.Generator().manual_seed(seed)) % classes


def test_label_information_of_a_copy_is_the_label_entropy() -> None:
    labels = _balanced_labels(600)
    entropy = math.log2(10)
    one_hot = F.one_hot(labels, 10).float()
    assert mutual_information(one_hot, labels) == pytest.approx(entropy, abs=0.05)
    embedding = torch.randn(10, 32, generator=torch.Generator().manual_seed(1))[labels]
    noisy = embedding + 0.01 * torch.randn(600, 32, generator=torch.Generator().manual_seed(2))
    assert mutual_information(noisy, labels) == pytest.approx(entropy, abs=0.05)


def test_label_information_of_independent_noise_is_about_zero() -> None:
    labels = _balanced_labels(600)
    noise = torch.randn(600, 100, generator=torch.Generator().manual_seed(3))
    assert abs(mutual_information(noise, labels)) < 0.1
    with pytest.raises(ValueError, match="integer class indices"):
        mutual_information(noise, labels.float())
    with pytest.raises(ValueError, match="test_fraction"):
        mutual_information(noise, labels, test_fraction=1.0)


def test_input_information_of_clusters_points_and_constants() -> None:
    labels = _balanced_labels(500)
    clusters = F.one_hot(labels, 10).float()
    assert input_information(clusters) == pytest.approx(math.log2(10), abs=1e-3)  # 10 tight clusters
    assert input_information(100 * clusters) == pytest.approx(input_information(clusters))  # scale-free
    assert input_information(torch.eye(64)) == pytest.approx(6.0, abs=0.01)  # 64 separated points: log2(64)
    assert input_information(torch.ones(20, 4)) == 0.0
    # Not saturated: two points at distance d have total variance d^2 / 4, so with noise_ratio 1 the
    # kernel between them is exp(-d^2 / (2 d^2 / 4)) = exp(-2) and I = 1 - log2(1 + exp(-2)) bits.
    pair = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert input_information(pair, noise_ratio=1.0) == pytest.approx(1 - math.log2(1 + math.exp(-2)), abs=1e-9)
    with pytest.raises(ValueError, match="noise_ratio"):
        input_information(clusters, noise_ratio=0)


def test_mutual_information_with_about_one_sample_a_class_splits_at_random() -> None:
    """32 samples of 100 classes (a smoke build's CIFAR-100; ImageNet's 1,000 classes at the
    paper's sample count are alike): no class is large enough to hold one out, so the split is a
    random one instead of an empty held-out part that stopped the probe."""
    labels = torch.tensor([i % 100 for i in range(0, 64, 2)] [:30] + [0, 2])  # 30 classes once, two of them twice
    features = torch.randn(len(labels), 16, generator=torch.Generator().manual_seed(0))
    bits = mutual_information(features, labels)
    assert math.isfinite(bits)
    every_class_once = torch.arange(32)
    assert math.isfinite(mutual_information(features, every_class_once))


def test_block_mutual_information_table() -> None:
    table = block_mutual_information(_resnet(), _images(80), samples=80, max_features=128)
    assert list(table.columns) == [
        "block", "label_bits", "input_bits", "label_entropy_bits", "saturation_bits",
        "samples", "features_used", "features_total",
    ]
    assert len(table) == 9 and np.allclose(table.label_entropy_bits, math.log2(10))
    assert (table.input_bits <= table.saturation_bits + 1e-9).all() and (table.input_bits > 0).all()
    reps = block_representations(_resnet(), _images(80), samples=80, max_features=128)
    for block in (0, 8):  # each block's estimates are those of its own representation
        features = reps.blocks[block].features
        assert table.label_bits[block] == pytest.approx(mutual_information(features, reps.labels))
        assert table.input_bits[block] == pytest.approx(input_information(features))


# ---------------------------------------------------------------- any backbone: a ViT


def test_every_analysis_accepts_a_vit() -> None:
    model, other = _vit(0), _vit(1)
    data = _images(64)
    dominance = gradient_dominance(model, *_batch(32))
    assert np.allclose(dominance.groupby("block")["share"].sum(), 1) and len(dominance) == 3 + 2 + 1
    path = linear_path(model, other, data, data, points=3, bn_batches=1, batch_size=32)
    assert len(path) == 3 * 3 and len(barrier(path)) == 3
    ranks = block_ranks(model, data, samples=64)
    assert list(ranks.features_total) == [5 * 32] * 3  # tokens (class token included) x width
    assert len(block_mutual_information(model, data, samples=64)) == 3


# ---------------------------------------------------------------- two stored tiny runs


def test_analyses_on_two_stored_tiny_runs(tmp_path: Path) -> None:
    from mexit.config import load_config
    from mexit.data import load
    from mexit.store import RunStore

    store = RunStore(tmp_path)
    joint = train_or_load(store, load_config("tiny", ["train.regime=joint", "train.dominance_every=5"]))
    mixed = train_or_load(store, load_config("tiny", ["train.regime=mixed"]))
    probes = joint.probes()
    assert {"step", "block", "exit", "share", "cosine", "dominant"} <= set(probes.columns)
    assert np.allclose(probes.groupby(["step", "block"])["share"].sum(), 1)
    splits = load(joint.config.data)
    a, b = trained_model(joint), trained_model(mixed)
    blocks, exits = len(a.blocks), a.num_exits
    path = linear_path(a, b, splits.train_eval, splits.test, points=3, bn_batches=2)
    assert len(path) == 3 * exits and len(barrier(path)) == exits
    images = torch.stack([splits.test[i][0] for i in range(64)])
    dominance = gradient_dominance(a, images, splits.targets("test")[:64])
    assert set(dominance.block) == set(range(1, blocks + 1))
    assert len(block_ranks(a, splits.test, samples=200)) == blocks
    assert len(block_mutual_information(b, splits.test, samples=200)) == blocks


def test_effective_rank_is_pinned_on_singular_values_3_and_1() -> None:
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    other = torch.tensor([1.0, 1.0, -1.0, -1.0])
    result = numerical_rank(torch.stack([1.5 * signs, 0.5 * other], dim=1))  # singular values 3 and 1
    assert result.singular_values.tolist() == pytest.approx([3.0, 1.0])
    assert result.effective_rank == pytest.approx(1.7548, abs=1e-4)  # exp(H(0.75, 0.25)), not of (0.9, 0.1)
