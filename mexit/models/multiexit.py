"""A backbone with internal classifiers: every exit's logits in one pass, or real early exiting."""
from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mexit.models.exit_rules import make_rule
from mexit.models.methods import ExitMethod, Record
from mexit.models.msdnet import MSDBlock


_BACKBONE_PREFIXES = ("stem.", "blocks.", "final_head.")


class EarlyExit(NamedTuple):
    """Result of early-exit inference, one row per sample."""

    logits: Tensor
    """(N, classes): logits of the exit each sample left at."""
    preds: Tensor
    """(N,): predicted class."""
    exit_index: Tensor
    """(N,): 0-based exit each sample left at; num_exits - 1 is the backbone's own head."""


def select_samples(x: Tensor, keep: Tensor) -> Tensor:
    """The samples (rows) of `x` that the boolean mask `keep` marks, in the memory order of `x`.

    Channels-last maps are gathered through their (N, H, W, C) view: the same result as
    `x[keep]`, in about 40% of its time on a CPU.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        rows = keep.nonzero().squeeze(1)
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x[keep]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale`: all of it when `width` is
    None, else only the last `width` values of each row (dim 1) of a 2-D tensor."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float, width: int | None) -> Tensor:
        ctx.scale = scale
        ctx.width = width
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if ctx.width is None:
            return grad * ctx.scale, None, None
        grad = grad.clone()
        grad[:, grad.shape[1] - ctx.width:] *= ctx.scale
        return grad, None, None


class _Records:
    """The ICs' records of the latest forward pass; never copied or pickled with the model."""

    def __init__(self) -> None:
        self.records: list[Record] | None = None

    def __deepcopy__(self, memo: dict) -> _Records:
        return _Records()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.records = None


class MultiExit(nn.Module):
    """A backbone (`stem`, `blocks`, `final_head`) with internal classifiers `ics`.

    IC k reads the output of block `placement[k]` (1-based). `forward` returns the logits of all
    `num_exits` exits (the last one is `final_head`'s), computing each block once.
    `gradient_equilibrium` (Li et al., ICCV 2019): with k exits, at the block feeding exit i
    (1-based) the gradient from that IC is scaled by 1/(k-i+1) and the gradient from the rest of
    the backbone by (k-i)/(k-i+1); forward values are unchanged. `equilibrium` says which part of
    the block's output is scaled: "whole-output" (ours), all of it; "coarsest-scale" (IMTA's code),
    for an MSDNet only its coarsest scale (the one the classifiers read), the finer scales'
    gradients passing unscaled. Any other backbone's block outputs a single scale (one feature map
    or token sequence), so there "coarsest-scale" scales exactly as "whole-output" (the training
    loop also sums the exits' losses under "coarsest-scale", as IMTA's code does).

    With `ics_active` False (the backbone-alone phase P1), `forward` skips the ICs and returns the
    final exit's logits only, so that nothing about the ICs touches the backbone's training.

    Also: `num_exits` (= len(ics) + 1), `num_classes`, `input_shape` (C, H, W), `method` (its
    name, e.g. "pbee", for the training code's loss weights) and `exit_rule` (the method's rule).
    Build one with `mexit.models.build`.
    """

    def __init__(
        self,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        final_head: nn.Module,
        ics: Sequence[nn.Module],
        placement: Sequence[int],
        method: ExitMethod,
        num_classes: int,
        input_shape: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.final_head = final_head
        self.ics = nn.ModuleList(ics)
        self.placement = tuple(placement)
        self.num_exits = len(ics) + 1
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.method = method.name
        self.exit_rule = method.exit_rule
        self.gradient_equilibrium = False
        self.equilibrium = "whole-output"
        self.ics_active = True
        self._method = method
        self._ic_at = {block: k for k, block in enumerate(self.placement)}
        self._latest = _Records()

    def extra_repr(self) -> str:
        return f"method={self.method!r}, placement={self.placement}, num_exits={self.num_exits}"

    def backbone_modules(self) -> list[nn.Module]:
        """The backbone's modules as they are called: stem, each block, final head."""
        return [self.stem, *self.blocks, self.final_head]

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the stem, blocks and final head."""
        for module in self.backbone_modules():
            yield from module.parameters()

    def ic_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not the backbone's."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return (p for p in self.parameters() if id(p) not in backbone)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The entries of `state_dict()` that belong to the stem, the blocks and the final head."""
        return {key: value for key, value in self.state_dict().items() if key.startswith(_BACKBONE_PREFIXES)}

    def load_phase_state(self, state: Mapping[str, Tensor]) -> None:
        """Load a full `state_dict()` or a `backbone_state_dict()` (the ICs then keep their weights)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(key.startswith(_BACKBONE_PREFIXES) for key in missing):
            raise RuntimeError(
                f"state does not fit this model: unexpected keys {unexpected[:3]}, missing backbone keys "
                f"{[key for key in missing if key.startswith(_BACKBONE_PREFIXES)][:3]}"
            )

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """The output of every block, in order."""
        outputs = []
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def exit_stream(self, x: Tensor) -> Generator[Tensor, Tensor | None, None]:
        """Yields each exit's logits in order, running each block once and only when needed.

        Sending a boolean mask over the current batch after an exit keeps only those samples
        for the later exits.
        """
        records: list[Record] = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks, 1):
            x = block(x)
            k = self._ic_at.get(index) if self.ics_active else None
            if k is None:
                continue
            features = x
            if self.gradient_equilibrium and torch.is_grad_enabled():
                remaining = self.num_exits - k
                coarsest_only = self.equilibrium == "coarsest-scale" and isinstance(block, MSDBlock)
                width = block.coarsest_values if coarsest_only else None
                features = _ScaleGrad.apply(x, 1 / remaining, width)
                x = _ScaleGrad.apply(x, (remaining - 1) / remaining, width)
            logits, record = self._method.ic_logits(self.ics, k, features, records)
            records.append(record)
            keep = yield logits
            if keep is not None:
                x = select_samples(x, keep)
                records = [tuple(t[keep] for t in r) for r in records]
        self._latest.records = records
        yield self.final_head(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.exit_stream(x))

    def auxiliary_loss(self, logits: list[Tensor], targets: Tensor) -> Tensor | None:
        """The method's extra loss term for the latest forward pass (GPF's imitation loss), or None.

        `logits` must be that forward's output; GPF's term uses the hidden states it recorded.
        """
        if not self._method.has_auxiliary_loss:
            return None
        records = self._latest.records
        if records is None or len(logits) != self.num_exits or any(len(r[0]) != len(targets) for r in records):
            raise RuntimeError("auxiliary_loss needs the logits and targets of the latest forward() call")
        return self._method.auxiliary_loss(self.ics, records)

    @torch.no_grad()
    def early_exit(self, x: Tensor, threshold: float, rule: str | None = None) -> EarlyExit:
        """Early-exit inference: each sample leaves at the first exit that `rule` lets it.

        `rule` is "maxprob", "entropy" or "patience" (see `mexit.models.exit_rules`), by default
        the method's own (patience for PBEE, maxprob otherwise). Samples that leave are dropped
        from the batch; blocks after the last departure are never run. Needs eval mode.
        """
        if self.training:
            raise RuntimeError("early_exit runs in eval mode: call model.eval() first")
        decide = make_rule(rule or self.exit_rule, threshold)
        n = x.shape[0]
        exit_index = torch.full((n,), self.num_exits - 1, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        state = decide.start(n, x.device)
        stream = self.exit_stream(x)
        logits = next(stream)
        out = logits.new_empty(n, logits.shape[-1])
        for k in range(self.num_exits - 1):
            leave, state = decide.leave(logits, state)
            if not leave.any():
                logits = stream.send(None)
                continue
            leaving = active[leave]
            out[leaving] = logits[leave]
            exit_index[leaving] = k
            if len(leaving) == len(active):
                stream.close()
                return EarlyExit(out, out.argmax(-1), exit_index)
            keep = ~leave
            active = active[keep]
            state = tuple(t[keep] for t in state)
            logits = stream.send(keep)
        out[active] = logits
        return EarlyExit(out, out.argmax(-1), exit_index)
