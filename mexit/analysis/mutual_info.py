"""Mutual information between a layer's representation Z and the labels Y or the inputs X, in bits.

Both estimators are ours; each is chosen to stay meaningful for representations with thousands of
features, and each has a known bias.

- ``I(Z;Y)``, :func:`mutual_information`: the variational lower bound ``H(Y) - CE`` of a linear
  probe (Barber & Agakov, 2003; the "usable information" of Xu et al., ICLR 2020). The probe is a
  multinomial logistic regression on the top ``probe_dim`` principal components of Z, fitted on a
  stratified train part; ``CE`` is its cross-entropy on the held-out part and ``H(Y)`` the plug-in
  entropy of the held-out labels. Biased low: it counts only linearly decodable information, and a
  finite probe is imperfect. On uninformative features it can dip slightly below zero (the probe's
  held-out error); it is not clipped.
- ``I(X;Z)``, :func:`input_information`: the network is deterministic, so ``I(X;Z)`` of continuous
  inputs is infinite; what is estimated is ``I(X; Z + e)`` with Gaussian noise ``e`` of variance
  ``noise_ratio`` times Z's total variance, using the pairwise-distance (KDE) upper bound of
  Kolchinsky & Tracey (Entropy, 2017), as in Saxe et al. (ICLR 2018). Biased high (an upper bound),
  saturating at ``log2(samples)`` when the samples lie further apart than the noise, and dependent on
  ``noise_ratio``; scaling Z does not change it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mexit.analysis.features import block_representations

PROBE_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Inverse L2 strengths the probe chooses from, by held-in validation cross-entropy."""
UNSEEN_MASS = 1e-6
"""The probability the label probe spreads evenly over all classes (:func:`_probe_cross_entropy`)."""


def mutual_information(
    features: Tensor,
    labels: Tensor,
    test_fraction: float = 0.5,
    probe_dim: int = 64,
    seed: int = 0,
) -> float:
    """Linear-probe lower bound of ``I(Z;Y)`` in bits (see the module doc).

    ``features`` is ``[samples, ...]`` (flattened per sample); ``labels`` ``[samples]`` class indices.
    The probe's L2 strength is chosen from :data:`PROBE_CS` on a third of the train part, then the
    probe is refitted on the whole train part.
    """
    x, y = _check_pair(features, labels)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if probe_dim < 1:
        raise ValueError(f"probe_dim must be >= 1, got {probe_dim}")
    rng = np.random.default_rng(seed)
    train, test = _stratified_split(y, test_fraction, rng)
    if len(train) < 3 or len(test) < 1:
        raise ValueError(f"{len(y)} samples are too few to split with test_fraction={test_fraction}")
    fit, val = _stratified_split(y[train], 1 / 3, rng)
    fit, val = train[fit], train[val]
    fit_x, val_x = _principal_components(x, fit, val, probe_dim)
    best = min(PROBE_CS, key=lambda c: _probe_cross_entropy(fit_x, y[fit], val_x, y[val], c))
    train_x, test_x = _principal_components(x, train, test, probe_dim)
    cross_entropy = _probe_cross_entropy(train_x, y[train], test_x, y[test], best)
    return (_entropy_nats(y[test]) - cross_entropy) / math.log(2)


def input_information(features: Tensor, noise_ratio: float = 0.1) -> float:
    """Pairwise-distance upper bound of ``I(X; Z + e)`` in bits (see the module doc).

    With samples ``z_i``, ``n`` of them, and ``s2 = noise_ratio * mean_i |z_i - mean(z)|^2``:
    ``-mean_i log2( mean_j exp(-|z_i - z_j|^2 / (2 s2)) )``; 0 for a constant representation.
    """
    if features.ndim < 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [samples >= 2, ...], got shape {tuple(features.shape)}")
    if not noise_ratio > 0:
        raise ValueError(f"noise_ratio must be > 0, got {noise_ratio}")
    z = features.detach().flatten(1).double()
    total_variance = (z - z.mean(0)).pow(2).sum(1).mean()
    if total_variance <= 0:
        return 0.0
    distances = torch.cdist(z, z).pow(2)
    log_kernel = -distances / (2 * noise_ratio * total_variance)
    log_density = torch.logsumexp(log_kernel, dim=1) - math.log(len(z))
    return float(-log_density.mean()) / math.log(2)


def block_mutual_information(
    model: nn.Module,
    dataset: Dataset,
    samples: int = 1000,
    max_features: int | None = 4096,
    seed: int = 0,
    test_fraction: float = 0.5,
    probe_dim: int = 64,
    noise_ratio: float = 0.1,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Both estimates for every block's output of a multi-exit model on a seeded sample of ``dataset``.

    Columns: block (1-based), label_bits (``I(Z;Y)`` lower bound), input_bits (``I(X;Z+e)`` upper
    bound), label_entropy_bits (``H(Y)`` of the sample), saturation_bits (``log2(samples)``), samples,
    features_used, features_total.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if probe_dim < 1:
        raise ValueError(f"probe_dim must be >= 1, got {probe_dim}")
    if not noise_ratio > 0:
        raise ValueError(f"noise_ratio must be > 0, got {noise_ratio}")
    reps = block_representations(model, dataset, samples, max_features, seed, batch_size)
    label_entropy = _entropy_nats(reps.labels.numpy()) / math.log(2)
    rows = []
    for block in reps.blocks:
        rows.append(
            {
                "block": block.block,
                "label_bits": mutual_information(block.features, reps.labels, test_fraction, probe_dim, seed),
                "input_bits": input_information(block.features, noise_ratio),
                "label_entropy_bits": label_entropy,
                "saturation_bits": math.log2(reps.samples),
                "samples": reps.samples,
                "features_used": block.features_used,
                "features_total": block.features_total,
            }
        )
    return pd.DataFrame(rows)


def _check_pair(features: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    if features.ndim < 2:
        raise ValueError(f"features must be [samples, ...], got shape {tuple(features.shape)}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(f"labels must be [samples={len(features)}], got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return features.detach().flatten(1).double().cpu().numpy(), labels.cpu().numpy()


def _stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices kept and held out: ``floor(fraction * count)`` of every class held out, at least one kept.

    Where every class is too small for that to hold any out (a class or two per sample: a few
    hundred samples of ImageNet's 1,000 classes, or a smoke build's 32 of CIFAR-100's 100), the
    split is a random one instead: ``round(fraction * n)`` held out (at least one, never all)."""
    kept: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        cut = min(int(fraction * len(members)), len(members) - 1)
        held.append(members[:cut])
        kept.append(members[cut:])
    if sum(len(part) for part in held) == 0 and len(labels) > 1:
        order = rng.permutation(len(labels))
        cut = min(max(1, round(fraction * len(labels))), len(labels) - 1)
        return np.sort(order[cut:]), np.sort(order[:cut])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _principal_components(
    x: np.ndarray, train: np.ndarray, test: np.ndarray, probe_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows projected on the train part's top principal components.

    The components are divided by one common factor (unit mean variance on the train part), so the
    probe's L2 strength means the same for any scale of the features.
    """
    from sklearn.decomposition import PCA  # scikit-learn where the probes run: a second a process otherwise

    components = min(probe_dim, x.shape[1], len(train) - 1)
    pca = PCA(n_components=components, svd_solver="full").fit(x[train])
    scale = math.sqrt(max(float(pca.explained_variance_.mean()), 1e-300))
    return pca.transform(x[train]) / scale, pca.transform(x[test]) / scale


def _probe_cross_entropy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: float
) -> float:
    """Held-out cross-entropy (nats) of a multinomial logistic regression with inverse L2 strength
    ``c``, its distribution mixed with :data:`UNSEEN_MASS` of a uniform one over every class of
    either part: a class the probe never saw (a split of a few samples a class) then costs about
    ``log(classes / UNSEEN_MASS)`` nats, not an infinite or misread one; any mixture is a predictor
    of ``Y``, so the bound stays a bound."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y)
    classes = np.union1d(train_y, test_y)
    proba = np.zeros((len(test_y), len(classes)))
    proba[:, np.searchsorted(classes, probe.classes_)] = probe.predict_proba(test_x)
    proba = (1 - UNSEEN_MASS) * proba + UNSEEN_MASS / len(classes)
    return float(-np.log(proba[np.arange(len(test_y)), np.searchsorted(classes, test_y)]).mean())


def _entropy_nats(labels: np.ndarray) -> float:
    counts = np.unique(labels, return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())
