"""What every notebook parameter may hold, in one place, checked before anything is trained.

A parameter means the same on every page that declares it (``samples`` is a count of test images
wherever it appears), so the checks are keyed by name: :data:`CHECKS`. The study's own parameters
(``rows``, ``seeds``, ``regimes``, ``variants``, ``budgets``, ``grid``, ``pick``, ``aggregate``,
``ztw_final``, ``runs_root``, ``fresh_seeds``, ``equal_budget``, ``p1_share``, ``longer_schedule``) are checked by
building the study without training (:func:`mexit.plan.check_page`). Each check raises one
:class:`mexit.config.ParameterError` naming the parameter and what it allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mexit.config import ParameterError

Check = Callable[[str, Any, Mapping[str, Any]], None]
"""A check of one parameter: its name, its value and the page's other values (for a check that
depends on them, such as seeds chosen among the page's ``seeds``)."""


def integer(least: int, *, none: bool = False) -> Check:
    """An integer >= ``least`` (or None, where ``none``)."""
    def check(name: str, value: Any, _: Mapping[str, Any]) -> None:
        if none and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ParameterError(f"{name} must be an integer >= {least}{' or null' if none else ''}, got {value!r}")

    return check


def number(low: float, high: float, *, low_open: bool = True, high_open: bool = False) -> Check:
    """A finite number in the interval from ``low`` to ``high`` (open or closed at each end)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(name: str, value: Any, _: Mapping[str, Any]) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise ParameterError(f"{name} must be a number in {interval}, got {value!r}")

    return check


def boolean(name: str, value: Any, _: Mapping[str, Any]) -> None:
    """true or false."""
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be true or false, got {value!r}")


def text(*, none: bool = False) -> Check:
    """A non-empty string (or None, where ``none``)."""
    def check(name: str, value: Any, _: Mapping[str, Any]) -> None:
        if none and value is None:
            return
        if not isinstance(value, str) or not value:
            raise ParameterError(f"{name} must be a non-empty string{' or null' if none else ''}, got {value!r}")

    return check


def distinct(allowed: Callable[[], Sequence[Any]]) -> Check:
    """A non-empty list of distinct values among ``allowed()`` (computed when checked)."""
    def check(name: str, value: Any, _: Mapping[str, Any]) -> None:
        choices = tuple(allowed())
        values = value if isinstance(value, list) else None
        if not values or len(set(map(repr, values))) != len(values) or any(v not in choices for v in values):
            raise ParameterError(f"{name} must be a non-empty list of distinct values of {choices}, got {value!r}")

    return check


def some_seeds(name: str, value: Any, values: Mapping[str, Any]) -> None:
    """None (every seed of the page) or a non-empty list of some of its ``seeds``."""
    seeds = values.get("seeds")
    if value is None:
        return
    if not isinstance(value, list) or not value or not isinstance(seeds, list) or any(s not in seeds for s in value):
        raise ParameterError(f"{name} must be null or a non-empty list of some of the page's seeds {seeds!r}, got {value!r}")


def one_seed(name: str, value: Any, values: Mapping[str, Any]) -> None:
    """None (the page's first seed) or one of its ``seeds``."""
    seeds = values.get("seeds")
    if value is not None and (not isinstance(seeds, list) or value not in seeds or isinstance(value, bool)):
        raise ParameterError(f"{name} must be null or one of the page's seeds {seeds!r}, got {value!r}")


def row_families(name: str, value: Any, values: Mapping[str, Any]) -> None:
    """None (the page's rows are the sizes of one family) or a list of families, each a list of at
    least two of the page's row labels, no label in two families."""
    if value is None:
        return
    labels = [row.get("label") for row in values.get("rows") or [] if isinstance(row, dict)]
    groups = value if isinstance(value, list) and value and all(isinstance(g, list) and len(g) >= 2 for g in value) else None
    members = [label for group in groups or [] for label in group]
    if groups is None or len(set(map(repr, members))) != len(members) or any(label not in labels for label in members):
        raise ParameterError(
            f"{name} must be null (the page's rows are one family) or a list of families, each a list of at least two "
            f"of the page's row labels {labels!r}, no label in two families; got {value!r}"
        )


def budget_list(name: str, value: Any, _: Mapping[str, Any]) -> None:
    """A non-empty list of distinct fractions of the backbone's cost, each in (0, 1]
    (:func:`mexit.evaluate.scoring.checked_budgets`, which names ``name``)."""
    from mexit.evaluate.scoring import checked_budgets

    if len(set(checked_budgets(value, name))) != len(value):
        raise ParameterError(f"{name} must be distinct fractions of the backbone's cost, got {value!r}")


def _corruptions() -> Sequence[str]:
    from mexit.evaluate.corruptions import CORRUPTIONS

    return CORRUPTIONS


def _severities() -> Sequence[int]:
    from mexit.evaluate.corruptions import SEVERITIES

    return SEVERITIES


def _ood_sets() -> Sequence[str]:
    from mexit.evaluate.ood_sets import OOD_SETS

    return OOD_SETS


def _exit_rules() -> Sequence[str]:
    from mexit.evaluate.rules import EXIT_RULES

    return EXIT_RULES


STUDY_PARAMETERS: tuple[str, ...] = (
    "rows", "seeds", "regimes", "variants", "budgets", "grid", "pick", "aggregate", "ztw_final", "runs_root",
    "fresh_seeds", "equal_budget", "p1_share", "longer_schedule",
)
"""The parameters checked by building the page's studies (:func:`mexit.plan.check_page`)."""

CHECKS: dict[str, Check] = {
    "profile": text(none=True),
    "samples": integer(2),
    "batch_size": integer(1),
    "repeats": integer(1),
    "bins": integer(1),
    "rules": distinct(_exit_rules),
    "corruptions": distinct(_corruptions),
    "severities": distinct(_severities),
    "ood_sets": distinct(_ood_sets),
    "ood_root": text(none=True),
    "records": text(none=True),
    "equilibrium": boolean,
    "equilibrium_seeds": some_seeds,
    "timed_seeds": some_seeds,
    "points": integer(2),
    "bn_batches": integer(0),
    "eval_samples": integer(2, none=True),
    "bezier_steps": integer(0),
    "bezier_lr": number(0.0, math.inf, high_open=True),
    "path_seed": one_seed,
    "plane_points": integer(2),
    "plane_bn_batches": integer(0),
    "plane_eval_samples": integer(2, none=True),
    "max_features": integer(1, none=True),
    "probe_dim": integer(1),
    "noise_ratio": number(0.0, 1.0),
    "eig_threshold": number(0.0, 1.0, high_open=True),
    "families": row_families,
    "target_budgets": budget_list,
}
"""Every notebook parameter beside the study's, by name, with what it allows."""


def check_values(values: Mapping[str, Any]) -> None:
    """Check each value of ``values`` whose name :data:`CHECKS` knows (names it does not know, such
    as a notebook's other variables, are left alone); the first bad one raises."""
    for name, check in CHECKS.items():
        if name in values:
            check(name, values[name], values)
