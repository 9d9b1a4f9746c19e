"""Inference cost of each exit of a multi-exit model, counted by PyTorch, never by hand.

The cost of leaving at exit k is everything run to produce its logits: the backbone up to the
block it reads plus every internal classifier up to and including k (the paper's convention).
Counts come from `torch.utils.flop_counter.FlopCounterMode` on one input (batch 1) in eval mode.
It counts matrix products, convolutions and attention; like fvcore it ignores element-wise work
(activations, pooling); unlike fvcore it also ignores normalisation layers. Units: MACs
(multiply-accumulates; fvcore calls these "flops") and FLOPs = 2 x MACs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from mexit.models import MultiExit


@dataclass(frozen=True)
class ExitCosts:
    """Cumulative cost of each exit, and of the plain backbone (stem, blocks, final head; no ICs)."""

    macs: tuple[int, ...]
    backbone_macs: int

    @property
    def flops(self) -> tuple[int, ...]:
        """Cumulative FLOPs of each exit (2 per multiply-accumulate)."""
        return tuple(2 * m for m in self.macs)

    @property
    def backbone_flops(self) -> int:
        return 2 * self.backbone_macs

    def to_frame(self) -> pd.DataFrame:
        """One row per exit (0-based): macs, flops, and pct_of_backbone (% of the plain backbone's cost)."""
        frame = pd.DataFrame({
            "exit": range(len(self.macs)),
            "macs": self.macs,
            "flops": self.flops,
            "pct_of_backbone": [100.0 * m / self.backbone_macs for m in self.macs],
        })
        frame.attrs["units"] = "macs: multiply-accumulates; flops: 2 x macs; pct_of_backbone: % of backbone macs"
        return frame


def _attention_flops(query: Sequence[int], key: Sequence[int], value: Sequence[int], *args: Any, **kwargs: Any) -> int:
    """FLOPs of softmax(q k^T) v: two batched matrix products."""
    *batch, length, dim = query
    keys, value_dim = key[-2], value[-1]
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * length * keys * (dim + value_dim)


# The CPU flash-attention kernel (timm ViTs use it through scaled_dot_product_attention) has no
# formula of its own in FlopCounterMode; the GPU kernels do.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops}


def _count(step: Callable[[], Any]) -> int:
    """MACs run by `step()`."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        step()
    return counter.get_total_flops() // 2


def exit_costs(model: MultiExit, input_shape: Sequence[int] | None = None) -> ExitCosts:
    """Per-exit cumulative cost of `model` on one input of `input_shape` (default `model.input_shape`)."""
    shape = tuple(input_shape or model.input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {shape}")
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            stream = model.exit_stream(x)
            macs, total = [], 0
            for _ in range(model.num_exits):
                total += _count(lambda: next(stream))
                macs.append(total)
            backbone_macs = _count(lambda: model.final_head(model.forward_blocks(x)[-1]))
    finally:
        model.train(was_training)
    return ExitCosts(tuple(macs), backbone_macs)
