"""Gradient dominance: which exit's loss drives each backbone block's gradient.

Training calls it (the probe a run's P2 records, :func:`training_probe`), so it lies beside
:mod:`mexit.train`, below the analyses; :mod:`mexit.analysis` exports it with the other three.

Definitions (ours; the paper's exact ones were not reachable). On a fixed batch, with ``L_i`` the
cross-entropy of exit ``i`` and ``theta_l`` the parameters of block ``l`` (all its tensors as one
vector):

- ``g_il = dL_i / d theta_l``; only exits fed by block ``l`` or a later block reach it.
- The total gradient is that of the loss as trained, ``g_l = sum_i w_i g_il`` with the loss weights
  ``w`` (uniform ``1/E`` over the ``E`` exits unless given; zero for an exit left out of the loss).
  A method's auxiliary loss (GPF's imitation term) belongs to no exit and is left out.
- ``share_il = w_i |g_il| / sum_j w_j |g_jl|`` over the exits that reach block ``l``: shares are in
  [0, 1] and sum to 1 per block; the exit with the largest share *dominates* the block. An exit of
  weight 0 keeps its row (its own ``|g_il|`` and cosine) with share 0; a block that no exit of
  positive weight reaches has share and cosine NaN and no dominant exit.
- ``cosine_il = <g_il, g_l> / (|g_il| |g_l|)``: how well exit ``i``'s gradient agrees with the
  update the block actually receives.

Gradients are taken in eval mode (BatchNorm running statistics, no dropout), so measuring changes
neither the model nor any random state; they are the model's own backward, including gradient
equilibrium scaling when that is switched on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mexit.data.loading import batch_of, sample_indices


def _exit_blocks(model: nn.Module) -> list[int]:
    """The 1-based block feeding each exit of a :class:`~mexit.models.MultiExit` (the final exit: the last block)."""
    return [*model.placement, len(model.blocks)]


def gradient_dominance(
    model: nn.Module, images: Tensor, labels: Tensor, weights: Tensor | Sequence[float] | None = None
) -> pd.DataFrame:
    """Per (block, exit) gradient norm, share, cosine with the total and dominance; see the module doc.

    ``weights``: one loss weight per exit (1-D, length ``model.num_exits``, zeros allowed), by
    default uniform. One row per block and exit that reaches it. Columns: block (1-based), exit
    (0-based; the last is the final head), exit_block, weight, grad_norm (``|g_il|``), share, cosine,
    dominant (bool). The model's mode, ``requires_grad`` flags and ``.grad`` are left as they were.
    """
    num_exits = model.num_exits
    w = torch.full((num_exits,), 1.0 / num_exits) if weights is None else torch.as_tensor(weights)
    w = w.detach().double().cpu()
    if w.shape != (num_exits,) or not bool(torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(
            f"weights must be {num_exits} non-negative numbers with a positive sum, got {w.tolist()}"
        )
    if images.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(f"labels must be [batch={images.shape[0]}], got shape {tuple(labels.shape)}")
    device = next(model.parameters()).device
    positions = _exit_blocks(model)
    params = [list(block.parameters()) for block in model.blocks]
    flags = {p: p.requires_grad for group in params for p in group}
    was_training = model.training
    model.eval()
    try:
        for p in flags:
            p.requires_grad_(True)
        logits = model(images.to(device))
        targets = labels.to(device)
        sizes = [sum(p.numel() for p in group) for group in params]
        grads: dict[tuple[int, int], Tensor] = {}
        for i, out in enumerate(logits):
            reached = [p for group in params[: positions[i]] for p in group]
            loss = F.cross_entropy(out.float(), targets)
            found = torch.autograd.grad(loss, reached, retain_graph=True, allow_unused=True)
            dense = [torch.zeros_like(p) if g is None else g for g, p in zip(found, reached)]
            vector = torch.cat([g.flatten() for g in dense])
            for block, part in enumerate(vector.double().split(sizes[: positions[i]]), 1):
                grads[(block, i)] = part
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return _dominance_table(grads, positions, w.tolist())


def _dominance_table(
    grads: dict[tuple[int, int], Tensor], positions: list[int], weights: Sequence[float]
) -> pd.DataFrame:
    rows = []
    for block in range(1, max(positions) + 1):
        exits = [i for i, position in enumerate(positions) if position >= block]
        total = sum(weights[i] * grads[(block, i)] for i in exits)
        total_norm = float(total.norm())
        norms = {i: float(grads[(block, i)].norm()) for i in exits}
        weighted = sum(weights[i] * norms[i] for i in exits)
        for i in exits:
            denominator = norms[i] * total_norm
            rows.append(
                {
                    "block": block,
                    "exit": i,
                    "exit_block": positions[i],
                    "weight": weights[i],
                    "grad_norm": norms[i],
                    "share": weights[i] * norms[i] / weighted if weighted > 0 else float("nan"),
                    "cosine": float(grads[(block, i)] @ total) / denominator if denominator > 0 else float("nan"),
                }
            )
    table = pd.DataFrame(rows)
    table["dominant"] = table["share"] == table.groupby("block")["share"].transform("max")
    return table


def training_probe(dataset: Dataset, seed: int, probe_size: int = 256) -> Callable[[nn.Module, int, Tensor], list[dict[str, Any]]]:
    """A probe for :func:`mexit.train.train_phase`: :func:`gradient_dominance` on a fixed batch.

    The batch is ``probe_size`` items of ``dataset`` (give it eval transforms) drawn with ``seed``
    once, here. ``probe(model, step, weights)`` takes the weight of every exit in the loss being
    trained (1-D, length ``model.num_exits``, zero for exits left out) and returns the table's rows,
    each with the training ``step``.
    """
    if probe_size < 2:
        raise ValueError(f"probe_size must be >= 2, got {probe_size}")
    images, labels = batch_of(dataset, sample_indices(len(dataset), probe_size, seed).tolist())  # type: ignore[arg-type]

    def probe(model: nn.Module, step: int, weights: Tensor) -> list[dict[str, Any]]:
        table = gradient_dominance(model, images, labels, weights=weights)
        return [{"step": step, **row} for row in table.to_dict("records")]

    return probe
