"""When a sample leaves at an internal classifier during early-exit inference.

- "maxprob": leave at the first exit whose largest softmax probability is strictly above
  `threshold` (in [0, 1]), as in the paper's evaluation.
- "entropy": leave at the first exit whose softmax entropy, divided by log(num_classes), is
  strictly below 1 - `threshold` (in [0, 1]; a higher threshold exits earlier, as for maxprob).
- "patience" (PBEE, Zhou et al., NeurIPS 2020): `threshold` is the patience p, an integer >= 0;
  leave at the first exit whose prediction equals that of the p exits before it, i.e. the last
  p + 1 exits agree (p = 0 leaves at the first exit), as in the authors' PBEE evaluation.

Samples that no internal classifier lets go leave at the final exit. A rule keeps per-sample
state (tensors whose first dimension is the batch) between exits.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

EXIT_RULES = ("maxprob", "entropy", "patience")

State = tuple[Tensor, ...]


class ExitRule:
    """Decides, exit after exit, which samples leave."""

    def start(self, batch: int, device: torch.device) -> State:
        """The state before the first exit."""
        return ()

    def leave(self, logits: Tensor, state: State) -> tuple[Tensor, State]:
        """A boolean mask of the samples that leave at this exit, and the new state."""
        raise NotImplementedError


class MaxProb(ExitRule):
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def leave(self, logits: Tensor, state: State) -> tuple[Tensor, State]:
        return logits.softmax(-1).amax(-1) > self.threshold, state


class Entropy(ExitRule):
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def leave(self, logits: Tensor, state: State) -> tuple[Tensor, State]:
        log_p = logits.log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) / math.log(logits.shape[-1])
        return entropy < 1 - self.threshold, state


class Patience(ExitRule):
    def __init__(self, patience: int) -> None:
        self.patience = patience

    def start(self, batch: int, device: torch.device) -> State:
        previous = torch.full((batch,), -1, dtype=torch.long, device=device)
        return previous, torch.zeros(batch, dtype=torch.long, device=device)

    def leave(self, logits: Tensor, state: State) -> tuple[Tensor, State]:
        previous, streak = state
        pred = logits.argmax(-1)
        streak = torch.where(pred == previous, streak + 1, 1)
        return streak > self.patience, (pred, streak)


def make_rule(rule: str, threshold: float) -> ExitRule:
    """The exit rule `rule` with its threshold, validated."""
    if rule not in EXIT_RULES:
        raise ValueError(f"unknown rule={rule!r}; supported: {', '.join(EXIT_RULES)}")
    if rule == "patience":
        if not float(threshold).is_integer() or threshold < 0:
            raise ValueError(f"threshold={threshold!r} is the patience for rule='patience': an integer >= 0")
        return Patience(int(threshold))
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold!r} must lie in [0, 1] for rule={rule!r}")
    return MaxProb(threshold) if rule == "maxprob" else Entropy(threshold)
