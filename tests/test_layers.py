"""The package's imports run one way, from the foundations up (docs/modules.md draws the map)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mexit.fingerprint import imported  # the same reading of imports that keys runs

PACKAGE = Path(__file__).resolve().parents[1] / "mexit"

LAYERS: tuple[tuple[str, ...], ...] = (
    # foundations: settings, files, data, models, the losses of a phase
    ("mexit", "mexit.fingerprint", "mexit.memory", "mexit.checkpoint", "mexit.progress", "mexit.distributed", "mexit.reference",
     "mexit.config", "mexit.data", "mexit.models", "mexit.regimes", "mexit.sample_weighting", "mexit.flops", "mexit.throughput",
     "mexit.machine"),
    # what is done with a model or its logits: training, inference, scoring, analyses, plots, claims
    ("mexit.train", "mexit.dominance", "mexit.evaluate", "mexit.analysis.features", "mexit.analysis.rank", "mexit.analysis.mutual_info",
     "mexit.analysis.connectivity", "mexit.analysis.plots", "mexit.analysis",
     "mexit.plots", "mexit.claims", "mexit.verdicts"),
    # what is kept
    ("mexit.store", "mexit.stale"),
    # runs obtained (trained into the store or loaded from it), and studies of them
    ("mexit.pipeline", "mexit.study", "mexit.placement_design"),
    # what a profile is and every run its pages read (below the book and the sweep, which both plan from it)
    ("mexit.parameters", "mexit.plan"),
    # the book's pages, the book, sweeps and the command line
    ("mexit.analysis.runs", "mexit.analysis.robustness", "mexit.pages", "mexit.smoke", "mexit.book", "mexit.sweep", "mexit.cli", "mexit.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest name in :data:`LAYERS` it is or lies under
    (``mexit`` itself names the package's ``__init__`` only)."""
    best = max(
        (
            (len(name), index)
            for index, names in enumerate(LAYERS)
            for name in names
            if module == name or (name != "mexit" and module.startswith(name + "."))
        ),
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it there")
    return best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_points_to_the_same_layer_or_below() -> None:
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for line, target in imported(ast.parse(path.read_text())):
            if layer_of(target) > layer_of(module):
                against.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {layer_of(target)} above {layer_of(module)})")
    assert not against, "imports against the layers:\n" + "\n".join(against)


def test_the_check_sees_an_import_against_the_layers() -> None:
    tree = ast.parse("def f():\n    from mexit.store import RunStore\n")
    assert [(line, target) for line, target in imported(tree)] == [(2, "mexit.store")]
    assert layer_of("mexit.store") > layer_of("mexit.train")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("mexit.nowhere")


def test_the_store_only_stores() -> None:
    """Nothing the store imports trains, infers or analyses: :mod:`mexit.pipeline` does that."""
    tree = ast.parse((PACKAGE / "store.py").read_text())
    doers = [target for _, target in imported(tree) if target.startswith(("mexit.train", "mexit.analysis", "mexit.flops", "mexit.distributed", "mexit.data"))]
    assert not doers


LONGEST_FUNCTION = 60  # lines of code (docstrings, comments and blank lines aside)
ARGUMENT_PARSERS = {"mexit.cli.main"}  # a parser's declarations are long and say one thing each


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    body = node.body
    first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body[0]
    lines = source[first.lineno - 1 : node.end_lineno]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def test_no_function_of_the_package_is_longer_than_sixty_lines_of_code() -> None:
    long, seen = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name, seen = f"{module_name(path)}.{node.name}", seen + 1
                if name not in ARGUMENT_PARSERS and code_lines(node, source) > LONGEST_FUNCTION:
                    long.append(f"{name} ({code_lines(node, source)} lines)")
    assert seen > 500 and long == []
