"""Training phases and the losses they optimise.

The paper's regimes are compositions of three phases (Eq. 1-3):

- ``P1`` trains the backbone alone on the final head's loss;
- ``P2`` trains backbone and all internal classifiers (ICs) together;
- ``P3`` trains the ICs only: no gradient reaches the backbone and its BatchNorm statistics do not
  change (it runs in eval mode whatever ``.train()`` is called later).

``disjoint = P1, P3``; ``joint = P2``; ``mixed = P1, P2`` (:data:`mexit.config.REGIMES`).
A phase is applied in one place, :func:`apply_phase`, and undone by the handle it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Phase:
    """Which parameters a phase trains and which exits its loss counts."""

    name: str
    trains_backbone: bool
    trains_ics: bool

    def exits_in_loss(self, num_exits: int) -> list[int]:
        """Indices of the exits whose loss is optimised (the final exit is ``num_exits - 1``)."""
        if not self.trains_ics:
            return [num_exits - 1]
        if not self.trains_backbone:
            return list(range(num_exits - 1))
        return list(range(num_exits))


PHASE_SPECS: dict[str, Phase] = {
    "P1": Phase("P1", trains_backbone=True, trains_ics=False),
    "P2": Phase("P2", trains_backbone=True, trains_ics=True),
    "P3": Phase("P3", trains_backbone=False, trains_ics=True),
}


class PhaseHandle:
    """Undoes :func:`apply_phase`: removes the eval-mode hooks and restores ``requires_grad``."""

    def __init__(self, hooks: list[torch.utils.hooks.RemovableHandle], grads: dict[nn.Parameter, bool]):
        self._hooks = hooks
        self._grads = grads

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for param, flag in self._grads.items():
            param.requires_grad_(flag)
        self._hooks, self._grads = [], {}


def _force_eval(module: nn.Module, _inputs: object) -> None:
    if module.training:
        module.eval()


def apply_phase(model: nn.Module, phase: Phase) -> PhaseHandle:
    """Set which parameters of a :class:`~mexit.models.MultiExit` train in ``phase``.

    Frozen parameters get ``requires_grad=False``. A frozen backbone additionally gets forward
    pre-hooks that put it in eval mode before every forward pass, so BatchNorm running statistics
    and dropout stay frozen even after ``model.train()``.
    """
    grads = {p: p.requires_grad for p in model.parameters()}
    for param in model.backbone_parameters():
        param.requires_grad_(phase.trains_backbone)
    for param in model.ic_parameters():
        param.requires_grad_(phase.trains_ics)
    hooks = []
    if not phase.trains_backbone:
        hooks = [m.register_forward_pre_hook(_force_eval) for m in model.backbone_modules()]
    return PhaseHandle(hooks, grads)


def exit_weights(
    scheme: str, exits: Sequence[int], num_exits: int, fraction_done: float = 1.0
) -> Tensor:
    """Loss weight of each exit in ``exits`` (indices among ``num_exits``), summing to 1.

    - ``uniform``: the plain mean of the per-exit cross-entropies (the paper's default).
    - ``linear``: weights growing linearly with depth, ``(i + 1) / sum`` (GPF, as the authors; our
      trained PBEE).
    - ``sdn``: our reading of SDN's schedule (Kaya et al., ICML 2019): an IC at relative depth
      ``tau = (i + 1) / num_exits`` has weight ``0.01 + (tau - 0.01) * fraction_done``, growing with the
      fraction of the phase's steps done, ``fraction_done`` in [0, 1]; the final exit weighs 1. Normalised to sum to 1.
    """
    depth = torch.tensor([float(i + 1) for i in exits])
    if scheme == "uniform":
        weights = torch.ones(len(exits))
    elif scheme == "linear":
        weights = depth
    elif scheme == "sdn":
        tau = depth / num_exits
        weights = torch.where(
            torch.tensor([i == num_exits - 1 for i in exits]), torch.ones(len(exits)), 0.01 + (tau - 0.01) * fraction_done
        )
    else:
        raise ValueError(f"unknown loss weighting {scheme!r}; allowed: uniform, linear, sdn")
    return weights / weights.sum()


def default_weighting(method: str) -> str:
    """The loss weighting a method uses when the config says ``auto`` (GPF and our trained PBEE:
    linear; L2W replaces the loss weights by its learned per-sample weights)."""
    return "linear" if method in ("gpf", "pbee") else "uniform"


def multi_exit_loss(
    logits: Sequence[Tensor],
    targets: Tensor,
    exits: Sequence[int],
    weights: Tensor,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Weighted sum of the cross-entropies of ``exits``; also every exit's own loss (detached).

    ``targets`` are class indices, or class probabilities (mixup/cutmix soft targets).
    """
    losses = torch.stack(
        [F.cross_entropy(out.float(), targets, label_smoothing=label_smoothing) for out in logits]
    )
    total = (losses[list(exits)] * weights.to(losses.device)).sum()
    return total, losses.detach()
