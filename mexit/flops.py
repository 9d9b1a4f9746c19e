"""Inference cost of each exit of a multi-exit model, counted by a tool, never by hand.

The cost of leaving at exit k is everything run to produce its logits: the backbone up to the
block it reads plus every internal classifier up to and including k (the paper's convention).
Each exit is counted on one input (batch 1) in eval mode: under "macs" in one pass, exit by
exit; under "fvcore" as a forward that stops at its logits (fvcore traces whole forwards).
Two countings (`COUNTINGS`):

- "macs" (ours): the multiply-adds of convolutions, linear layers, matrix products and attention,
  from `torch.utils.flop_counter.FlopCounterMode`; nothing element-wise (activations, additions,
  pooling, softmax) and no normalisation.
- "fvcore" (the authors'): their setup (`flop_count` and `OP_HANDLERS` in utils.py of
  kamadforge/early-exit-benchmark, used by eval.py), i.e. fvcore's `FlopCountAnalysis` on a JIT
  trace with fvcore's default handlers (the same multiply-adds; in eval mode BatchNorm 2 per element
  with an affine map, else 1; LayerNorm and GroupNorm 5 per element with an affine map, else 4;
  adaptive average pooling 1 per input element; upsampling) plus their handlers, listed in
  `AUTHORS_HANDLERS`: 1 per output element for add, sub, mul, div (and their r-/in-place
  forms), exp, cumsum, ne, lt, gelu, silu_, dropout_, sigmoid, tanh, argmax and one_hot; 2 per
  output element for softmax and log_softmax; 1 per input element for mean, sum and adaptive max
  pooling; 1 per input plus 1 per output element for topk, scatter(_) and gather(_); and
  `scaled_dot_product_attention` as its two matrix products plus 1 per attention score for the
  scaling, 1 for an attention-mask tensor and 2 for the softmax. Ops with no handler count 0: ReLU,
  max and average pooling (non-adaptive), concatenation among them.

Units: MACs (multiply-accumulates; fvcore calls one multiply-add one "flop", and under "fvcore"
every counted element-wise op is one such unit too) and FLOPs = 2 x MACs.
"""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mexit.models import MultiExit

with warnings.catch_warnings():  # fvcore scripts a function with torch's deprecated JIT on import
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import Handle, elementwise_flop_counter, get_shape

COUNTINGS = ("macs", "fvcore")
COUNTING_ALIASES = {"authors": "fvcore"}  # the earlier spelling


@dataclass(frozen=True)
class ExitCosts:
    """Cumulative cost of each exit, and of the plain backbone (stem, blocks, final head; no ICs),
    under `counting` (one of `COUNTINGS`)."""

    macs: tuple[int, ...]
    backbone_macs: int
    counting: str

    @property
    def flops(self) -> tuple[int, ...]:
        """Cumulative FLOPs of each exit (2 per multiply-accumulate)."""
        return tuple(2 * m for m in self.macs)

    @property
    def backbone_flops(self) -> int:
        return 2 * self.backbone_macs

    def to_frame(self) -> pd.DataFrame:
        """One row per exit (0-based): macs, flops, and pct_of_backbone (% of the plain backbone's
        cost); `attrs` name the units and the counting."""
        frame = pd.DataFrame({
            "exit": range(len(self.macs)),
            "macs": self.macs,
            "flops": self.flops,
            "pct_of_backbone": [100.0 * m / self.backbone_macs for m in self.macs],
        })
        frame.attrs["units"] = "macs: multiply-accumulates; flops: 2 x macs; pct_of_backbone: % of backbone macs"
        frame.attrs["counting"] = self.counting
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


def _elementwise(ops: Sequence[str], per_input: int, per_output: int) -> dict[str, Handle]:
    """fvcore handlers counting `per_input` x the first input's elements + `per_output` x the first
    output's elements for each of `ops`."""
    return {f"aten::{op}": elementwise_flop_counter(per_input, per_output) for op in ops}


def _authors_attention(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handler for aten::scaled_dot_product_attention as the authors count it: q k^T and
    attn v as matrix products; per attention score, 1 division (the scaling), 1 addition when an
    attention-mask tensor is given, and 2 for the softmax."""
    *batch, queries, dim = get_shape(inputs[0])
    keys = get_shape(inputs[1])[-2]
    value_dim = get_shape(inputs[2])[-1]
    scores = queries * keys
    for size in batch:
        scores *= size
    return Counter({
        "matmul": scores * (dim + value_dim),
        "div": scores,
        "add": scores if get_shape(inputs[3]) is not None else 0,
        "softmax": 2 * scores,
    })


# The authors' handlers on top of fvcore's defaults (their utils.py, `OP_HANDLERS`). Their table
# also lists flatten and unflatten at 0, which is what fvcore gives an op with no handler.
AUTHORS_HANDLERS: dict[str, Handle] = {
    **_elementwise(
        ["add", "add_", "radd", "sub", "sub_", "rsub", "mul", "mul_", "rmul", "div", "div_", "rdiv", "exp",
         "cumsum", "ne", "lt", "gelu", "silu_", "dropout_", "sigmoid", "tanh", "argmax", "one_hot"],
        per_input=0, per_output=1,
    ),
    **_elementwise(["softmax", "log_softmax"], per_input=0, per_output=2),
    **_elementwise(["mean", "sum", "adaptive_max_pool2d"], per_input=1, per_output=0),
    **_elementwise(["topk", "scatter", "scatter_", "gather", "gather_"], per_input=1, per_output=1),
    "aten::scaled_dot_product_attention": _authors_attention,
}


def _count_macs(step: Callable[[], Any]) -> int:
    """MACs run by `step()`, by FlopCounterMode: matrix products, convolutions and attention."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        step()
    return counter.get_total_flops() // 2


def _cumulative_macs(model: MultiExit, x: Tensor) -> tuple[int, ...]:
    """Each exit's cumulative MACs in one pass: FlopCounterMode counts what runs, so the stream's
    steps are counted one exit at a time and summed."""
    stream = model.exit_stream(x)
    macs, total = [], 0
    for _ in range(model.num_exits):
        total += _count_macs(lambda: next(stream))
        macs.append(total)
    return tuple(macs)


def _count_authors(module: nn.Module, x: Tensor) -> int:
    """fvcore's total for `module(x)` with its default handlers and `AUTHORS_HANDLERS`."""
    analysis = FlopCountAnalysis(module, x).set_op_handle(**AUTHORS_HANDLERS)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total())


class _UpToExit(nn.Module):
    """`model` run until exit `index` (0-based; the last is the final head): returns the logits of
    exits 0..`index`, all of them so that fvcore's JIT trace keeps every IC run on the way (a trace
    drops work whose result is not returned)."""

    def __init__(self, model: MultiExit, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(islice(self.model.exit_stream(x), self.index + 1))


class _Backbone(nn.Module):
    """`model`'s plain backbone: stem, blocks and final head, no ICs."""

    def __init__(self, model: MultiExit) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.final_head(self.model.forward_blocks(x)[-1])


def exit_costs(model: MultiExit, input_shape: Sequence[int] | None = None, counting: str = "macs") -> ExitCosts:
    """Per-exit cumulative cost of `model` on one input of `input_shape` (default `model.input_shape`),
    under `counting`: "macs" (ours) or "fvcore" (the authors' fvcore setup; "authors" is read as
    it); see the module docstring."""
    counting = COUNTING_ALIASES.get(counting, counting)
    if counting not in COUNTINGS:
        raise ValueError(f"counting must be one of {COUNTINGS}, got {counting!r}")
    shape = tuple(input_shape or model.input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (channels, height, width), got {shape}")
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if counting == "macs":
                macs = _cumulative_macs(model, x)
                backbone_macs = _count_macs(lambda: _Backbone(model)(x))
            else:
                macs = tuple(_count_authors(_UpToExit(model, k), x) for k in range(model.num_exits))
                backbone_macs = _count_authors(_Backbone(model), x)
    finally:
        model.train(was_training)
    return ExitCosts(macs, backbone_macs, counting)


def counting_difference(model: MultiExit, input_shape: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per exit (0-based): its cumulative cost under each counting (`macs`, `fvcore`), each
    as % of the plain backbone's cost under the same counting (`macs_pct`, `fvcore_pct`), and
    `difference_pp` = fvcore_pct - macs_pct in percentage points."""
    frame = pd.DataFrame({"exit": range(model.num_exits)})
    for counting in COUNTINGS:
        costs = exit_costs(model, input_shape, counting).to_frame()
        frame[counting] = costs["macs"]
        frame[f"{counting}_pct"] = costs["pct_of_backbone"]
    frame["difference_pp"] = frame["fvcore_pct"] - frame["macs_pct"]
    frame.attrs["units"] = (
        "macs, fvcore: multiply-adds (fvcore's 'flops'); *_pct: % of the backbone's cost under the same "
        "counting; difference_pp: fvcore_pct - macs_pct, percentage points"
    )
    return frame
