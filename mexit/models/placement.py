"""Where internal classifiers sit: 1-based indices of the blocks whose output they read.

A placement is a strictly increasing sequence of block indices in 1..depth-1 (the last block feeds
the backbone's own head), or a named scheme:
- "every": after every block but the last;
- "every<k>" (e.g. "every2"): after blocks k, 2k, 3k, ... below depth;
- "resnet50-paper": after 1-based blocks 5, 7, 9, 11, 13, 15, the authors' ResNet-50 placement
  (their scripts' `place_at=[4, 6, 8, 10, 12, 14]` counts blocks from 0); needs 16 blocks.
An empty sequence means no internal classifier (the plain backbone, one exit).
"""
from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

SCHEMES: dict[str, tuple[int, ...]] = {"resnet50-paper": (5, 7, 9, 11, 13, 15)}
_EVERY = re.compile(r"every([1-9][0-9]*)?")
PLACEMENT_HELP = "'every', 'every<k>' (e.g. 'every2'), " + ", ".join(repr(s) for s in SCHEMES) + \
    ", or a strictly increasing list of 1-based block indices"


def check_placement(placement: str | Sequence[int]) -> None:
    """Validates the form of a placement (scheme name, or sorted unique positive ints) without a depth."""
    if isinstance(placement, str):
        if placement not in SCHEMES and not _EVERY.fullmatch(placement):
            raise ValueError(f"unknown placement={placement!r}; use {PLACEMENT_HELP}")
        return
    indices = list(placement)
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"placement={indices!r} must hold integers; use {PLACEMENT_HELP}")
    if any(i < 1 for i in indices):
        raise ValueError(f"placement={indices!r}: block indices are 1-based (at least 1)")
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError(f"placement={indices!r} must be strictly increasing, without duplicates")


def resolve_placement(placement: str | Sequence[int], depth: int) -> tuple[int, ...]:
    """The block indices of `placement` for a backbone of `depth` blocks.

    Raises ValueError naming the valid range 1..depth-1 when an index falls outside it.
    """
    check_placement(placement)
    if isinstance(placement, str):
        match = _EVERY.fullmatch(placement)
        if match:
            step = int(match.group(1) or 1)
            return tuple(range(step, depth, step))
        indices = SCHEMES[placement]
    else:
        indices = tuple(int(i) for i in placement)
    outside = [i for i in indices if not 1 <= i <= depth - 1]
    if outside:
        raise ValueError(
            f"placement={placement!r}: block indices {outside} are out of range for a backbone of "
            f"{depth} blocks; valid indices are 1..{depth - 1}"
        )
    return indices
