"""L2W's learned sample weighting (Han et al., "Learning to Weight Samples for Dynamic Early-exiting
Networks", ECCV 2022): the training side of the ``"l2w"`` method.

A weight prediction network (WPN: Linear(k, 500), ReLU, Linear(500, k), tanh) reads each sample's
cross-entropies at the k exits of the phase's loss and predicts a weight per sample and exit,
``w = 1 + epsilon (WPN(losses) - mean(WPN(losses)))``; the phase optimises ``mean(w * losses)``. The
WPN is meta-learned: on every ``META_INTERVAL``-th step the batch is halved; a virtual SGD step
(learning rate ``VIRTUAL_LR``) of the model on the first half's weighted loss is taken, kept
differentiable in the WPN's parameters, and the virtually updated model is scored on the second
half by the *early-exit* objective: ranked by confidence, the most confident unallocated
``floor(N q_i)`` samples are allocated to exit i, the rest to the final exit, and the mean over exits
of the allocated samples' cross-entropies is the meta loss, whose gradient trains the WPN (Adam).
The real step then trains the model on the first half with the WPN's weights. ``q_i`` falls
geometrically with depth, ``q_i ~ (p / 20)^i`` (i = 1..E), as the benchmark takes it from Han et al.'s code.

As in the authors' benchmark: epsilon 0.3 and p 15 (the values its comments give for Han et al.),
the WPN's form (Linear, ReLU, Linear, tanh) and its weights' normalisation, the virtual step's SGD
learning rate 1e-4, and the halved batch at a meta step. Ours, where the benchmark takes the value as
a required argument or differs: the WPN's width 500 (its class's default), Adam (lr 1e-4, weight
decay 1e-4) for the WPN, the meta step every 4th step (``META_INTERVAL``), and each meta-batch
sample allocated to one exit only (the benchmark never marks allocated samples, so every IC takes
its most confident samples among all, and the final exit all of them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

EPSILON = 0.3
TARGET_P = 15.0
WPN_WIDTH = 500
WPN_LR = 1e-4
WPN_WEIGHT_DECAY = 1e-4
VIRTUAL_LR = 1e-4
META_INTERVAL = 4


def exit_budget(num_exits: int, p: float = TARGET_P) -> Tensor:
    """The share of a meta batch allocated to each exit: ``q_i ~ (p / 20)^i``, i = 1..E, summing to 1."""
    if num_exits < 1 or not 0 < p < 20:
        raise ValueError(f"need num_exits >= 1 and 0 < p < 20, got {num_exits}, {p}")
    shares = torch.exp(math.log(p / 20) * torch.arange(1, num_exits + 1, dtype=torch.float64))
    return (shares / shares.sum()).float()


def allocate(logits: Sequence[Tensor], budget: Tensor) -> list[Tensor]:
    """Which samples each exit takes in the meta objective: exit i (but the last) the ``floor(N q_i)``
    most confident (max softmax) samples that no earlier exit took; the last exit the rest.
    Returns one index tensor per exit."""
    n = logits[0].shape[0]
    free = torch.ones(n, dtype=torch.bool, device=logits[0].device)
    taken = []
    for out, share in zip(logits[:-1], budget[:-1]):
        confidence = F.softmax(out.detach().float(), dim=-1).amax(-1).masked_fill(~free, -1.0)
        count = min(math.floor(n * float(share)), int(free.sum()))
        chosen = confidence.topk(count).indices if count else confidence.new_zeros(0, dtype=torch.long)
        free[chosen] = False
        taken.append(chosen)
    taken.append(free.nonzero().squeeze(1))
    return taken


def per_sample_losses(logits: Sequence[Tensor], targets: Tensor, exits: Sequence[int], label_smoothing: float = 0.0) -> Tensor:
    """[N, len(exits)]: each sample's cross-entropy at each exit of ``exits``."""
    return torch.stack(
        [F.cross_entropy(logits[i].float(), targets, reduction="none", label_smoothing=label_smoothing) for i in exits], 1
    )


class LearnedWeighting(nn.Module):
    """The WPN and its optimiser for one phase; a module, so that its state resumes with the phase."""

    def __init__(self, num_exits: int, num_heads: int) -> None:
        super().__init__()
        self.wpn = nn.Sequential(nn.Linear(num_exits, WPN_WIDTH), nn.ReLU(), nn.Linear(WPN_WIDTH, num_exits), nn.Tanh())
        self.optimizer = torch.optim.Adam(self.wpn.parameters(), lr=WPN_LR, weight_decay=WPN_WEIGHT_DECAY)
        self.budget = exit_budget(num_heads)

    def weights(self, losses: Tensor) -> Tensor:
        """Per-sample, per-exit weights for ``losses`` [N, k] (differentiable in the WPN)."""
        raw = self.wpn(losses.detach())
        return 1 + EPSILON * (raw - raw.mean())

    def weighted_loss(self, losses: Tensor) -> Tensor:
        """The phase's loss: ``mean(w * losses)``, the weights held fixed."""
        with torch.no_grad():
            weights = self.weights(losses)
        return (weights * losses).mean()

    def meta_step(
        self, model: nn.Module, images: Tensor, targets: Tensor, meta_images: Tensor, meta_targets: Tensor,
        exits: Sequence[int], label_smoothing: float = 0.0,
    ) -> float:
        """One WPN update through a virtual step of ``model`` (left unchanged, BatchNorm statistics
        included); returns the meta loss."""
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        outputs = functional_call(model, {**params, **buffers}, (images,))
        losses = per_sample_losses(outputs, targets, exits, label_smoothing)
        inner = (self.weights(losses) * losses).mean()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, allow_unused=True)
        virtual = {
            name: p if g is None else p - VIRTUAL_LR * g for (name, p), g in zip(params.items(), grads)
        }
        meta_outputs = functional_call(model, {**virtual, **buffers}, (meta_images,))
        taken = allocate(meta_outputs, self.budget.to(meta_images.device))
        meta_losses = [
            F.cross_entropy(out[index].float(), meta_targets[index], label_smoothing=label_smoothing)
            for out, index in zip(meta_outputs, taken) if len(index)
        ]
        meta_loss = torch.stack(meta_losses).mean()
        self.optimizer.zero_grad(set_to_none=True)
        meta_loss.backward(inputs=list(self.wpn.parameters()))
        self.optimizer.step()
        return float(meta_loss.detach())

    def state(self) -> dict:
        return {"wpn": self.wpn.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.wpn.load_state_dict(state["wpn"])
        self.optimizer.load_state_dict(state["optimizer"])
