"""Early-exit methods: how internal classifiers (ICs) are wired, and each method's exit rule.

- "sdn" (Kaya et al., ICML 2019): independent ICs; exit on max-probability.
- "pbee" (Zhou et al., NeurIPS 2020): the same ICs; exit on patience (see `exit_rules`), trained
  as a method of its own with loss weights growing linearly with depth (ours; the training code
  reads `model.method` to choose them). The authors' benchmark does not train PBEE: it applies the
  patience rule to an SDN-trained model, which the book does by scoring SDN runs with
  `exit_method: pbee` (`mexit.study`).
- "ztw" (Wołczyk et al., "Zero Time Waste", NeurIPS 2021), cascading part: IC k's final Linear
  also reads IC k-1's logits, detached (no gradient flows from IC k into IC k-1, as in ZTW and the
  authors' code) and passed through a LayerNorm of IC k's own (ZTW's appendix). ZTW's ensembling is
  done offline from stored logits by the evaluation code.
- "l2w" (Han et al., "Learning to Weight Samples for Dynamic Early-exiting Networks", ECCV 2022):
  SDN's ICs and exit rule; what differs is training, where a meta-learned network weights each
  sample's loss at each exit (`mexit.sample_weighting`; the training code reads `model.method`).
- "gpf" (Liao et al., "A Global Past-Future Early Exit Method for Accelerating Inference of
  Pre-trained Language Models", NAACL 2021), as implemented by the authors' benchmark (which
  follows Liao et al.'s released code rather than their paper). With n ICs, IC j has a head
  giving a state s_j = ReLU(head_j(features)) of width `state_dim`, a projection R_j and a gate
  G_j (Linear state_dim -> classes), an imitator I_j (Linear + ReLU, state_dim -> state_dim; for
  j >= 2) and a balance layer B_j (Linear classes -> classes). Exit k's logits are

      past   = sum_{j <= k} R_j(s_j)            (s_j detached for j < k)
      future = sum_{j > k}  R_j(I_j(s_k))        (IC k's guesses of the later states)
      beta   = sigmoid(B_k(ReLU(mean_{j <= k} G_j(s_j))))
      logits = beta * past + (1 - beta) * future

  The auxiliary (imitation) loss is the mean over k < n of mean_{j > k, batch} of
  1 - cos(I_j(s_k), s_j.detach()) (None with fewer than two ICs). Ours: each IC has its own
  balance layer (the authors share one across ICs), so that every IC owns its parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mexit.models.heads import Head

Record = tuple[Tensor, ...]
HeadFactory = Callable[[int, int, int], Head]
"""(IC index, output width, extra input width) -> a head reading that IC's block."""


class ExitMethod:
    """The wiring of independent ICs (SDN); other methods override what differs."""

    name: ClassVar[str] = "sdn"
    exit_rule: ClassVar[str] = "maxprob"
    has_auxiliary_loss: ClassVar[bool] = False

    def build_ics(self, make_head: HeadFactory, num_ics: int, num_classes: int) -> list[nn.Module]:
        """One module per IC."""
        return [make_head(k, num_classes, 0) for k in range(num_ics)]

    def ic_logits(
        self, ics: nn.ModuleList, index: int, features: Tensor, records: list[Record]
    ) -> tuple[Tensor, Record]:
        """Logits of IC `index` from its block's `features` and the earlier ICs' `records`,
        and this IC's record (tensors whose first dimension is the batch)."""
        return ics[index](features), ()

    def auxiliary_loss(self, ics: nn.ModuleList, records: list[Record]) -> Tensor | None:
        """An extra loss term from the records of a forward pass, or None."""
        return None


class SDN(ExitMethod):
    name = "sdn"


class PBEE(ExitMethod):
    name = "pbee"
    exit_rule = "patience"


class L2W(ExitMethod):
    name = "l2w"


class CascadeIC(nn.Module):
    """A ZTW IC: a head whose Linear also reads the previous IC's logits, detached and normalised."""

    def __init__(self, head: Head, num_classes: int, cascade: bool) -> None:
        super().__init__()
        self.head = head
        self.cascade_norm = nn.LayerNorm(num_classes) if cascade else None

    def forward(self, features: Tensor, previous: Tensor | None = None) -> Tensor:
        if self.cascade_norm is None:
            return self.head(features)
        return self.head(features, self.cascade_norm(previous.detach()))


class ZTW(ExitMethod):
    name = "ztw"

    def build_ics(self, make_head: HeadFactory, num_ics: int, num_classes: int) -> list[nn.Module]:
        return [
            CascadeIC(make_head(k, num_classes, num_classes if k else 0), num_classes, cascade=k > 0)
            for k in range(num_ics)
        ]

    def ic_logits(
        self, ics: nn.ModuleList, index: int, features: Tensor, records: list[Record]
    ) -> tuple[Tensor, Record]:
        previous = records[index - 1][0] if index else None
        logits = ics[index](features, previous)
        return logits, (logits.detach(),)


class GPFIC(nn.Module):
    """A GPF IC: head -> state, and this position's projection, gate, balance and imitator."""

    def __init__(self, head: Head, state_dim: int, num_classes: int, imitate: bool) -> None:
        super().__init__()
        self.head = head
        self.project = nn.Linear(state_dim, num_classes)
        self.gate = nn.Linear(state_dim, num_classes)
        self.balance = nn.Linear(num_classes, num_classes)
        self.imitator = nn.Sequential(nn.Linear(state_dim, state_dim), nn.ReLU()) if imitate else None

    def state(self, features: Tensor) -> Tensor:
        return F.relu(self.head(features))


class GPF(ExitMethod):
    name = "gpf"
    has_auxiliary_loss = True

    def __init__(self, state_dim: int = 128) -> None:
        self.state_dim = state_dim

    def build_ics(self, make_head: HeadFactory, num_ics: int, num_classes: int) -> list[nn.Module]:
        return [
            GPFIC(make_head(k, self.state_dim, 0), self.state_dim, num_classes, imitate=k > 0)
            for k in range(num_ics)
        ]

    def ic_logits(
        self, ics: nn.ModuleList, index: int, features: Tensor, records: list[Record]
    ) -> tuple[Tensor, Record]:
        state = ics[index].state(features)
        states = [record[0] for record in records] + [state]
        past = sum(ics[j].project(s) for j, s in enumerate(states))
        gate = torch.stack([ics[j].gate(s) for j, s in enumerate(states)]).mean(0)
        guesses = [ics[j].imitator(state) for j in range(index + 1, len(ics))]
        later = range(index + 1, len(ics))
        future = sum((ics[j].project(g) for j, g in zip(later, guesses)), torch.zeros_like(past))
        beta = torch.sigmoid(ics[index].balance(F.relu(gate)))
        logits = beta * past + (1 - beta) * future
        guessed = torch.stack(guesses, 1) if guesses else state.new_zeros(state.shape[0], 0, self.state_dim)
        return logits, (state.detach(), guessed)

    def auxiliary_loss(self, ics: nn.ModuleList, records: list[Record]) -> Tensor | None:
        losses = []
        for k in range(len(records) - 1):
            actual = torch.stack([record[0] for record in records[k + 1:]], 1)
            losses.append((1 - F.cosine_similarity(records[k][1], actual, dim=-1)).mean())
        return torch.stack(losses).mean() if losses else None


METHODS: dict[str, type[ExitMethod]] = {"sdn": SDN, "pbee": PBEE, "gpf": GPF, "ztw": ZTW, "l2w": L2W}
METHOD_KWARGS: dict[str, dict[str, Any]] = {"sdn": {}, "pbee": {}, "gpf": {"state_dim": 128}, "ztw": {}, "l2w": {}}


def make_method(name: str, method_kwargs: Mapping[str, Any] | None = None) -> ExitMethod:
    """The method `name` with its keyword arguments, validated."""
    if name not in METHODS:
        raise ValueError(f"unknown method={name!r}; supported: {', '.join(METHODS)}")
    kwargs = dict(method_kwargs or {})
    unknown = set(kwargs) - set(METHOD_KWARGS[name])
    if unknown:
        raise ValueError(f"method_kwargs {sorted(unknown)} not accepted by method={name!r}; "
                         f"it takes {sorted(METHOD_KWARGS[name]) or 'none'}")
    for key, value in kwargs.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"method_kwargs[{key!r}] must be a positive integer, got {value!r}")
    return METHODS[name](**kwargs)
