"""What a stored result was made by: the code of a module and of every ``mexit`` module it imports.

A key that lists its code by hand drifts from the code (a module added to the training path and
left off the list keys nothing). Here the list is derived: :func:`closure` follows the ``import``
statements of the package's modules (at their top and inside functions, those under
``if TYPE_CHECKING:`` aside, which only annotate), and :func:`code_fingerprint` hashes the syntax
trees of those modules without their docstrings, so that an edit of what the code does changes
the fingerprint and an edit of its documentation or comments does not.

What keys what: a run's phases by the closure of :mod:`mexit.pipeline` (everything that trains,
evaluates and stores a run), an analysis table by the closure of the module that computes it
(:meth:`mexit.store.RunStore.cached_table`).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
"""The folder of the ``mexit`` package."""


def module_path(module: str) -> Path | None:
    """The file of a ``mexit`` module (a package's ``__init__.py``), None when there is none."""
    relative = Path(*module.split(".")[1:])
    for candidate in (PACKAGE / relative / "__init__.py", (PACKAGE / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """Every ``mexit`` module a module's syntax tree imports, with the line: ``from mexit.a import
    b`` names ``mexit.a.b`` where that is a module, else ``mexit.a``; imports under ``if
    TYPE_CHECKING:`` are left out."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mexit":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate if module_path(candidate) is not None else node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "mexit")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@lru_cache(maxsize=None)
def closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """``roots`` and every ``mexit`` module they import, directly or not, sorted."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        path = module_path(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        pending.extend(_imports(module))
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _imports(module: str) -> tuple[str, ...]:
    """The ``mexit`` modules that ``module`` imports: each file parsed once a process, however many
    closures it is in (a book's pages share most of theirs)."""
    path = module_path(module)
    assert path is not None
    return tuple(target for _, target in imported(ast.parse(path.read_text())))


@lru_cache(maxsize=None)
def _module_code(module: str) -> str:
    """:func:`code_only` of ``module``'s file, once a process."""
    path = module_path(module)
    assert path is not None
    return code_only(path.read_text())


@lru_cache(maxsize=None)
def code_fingerprint(roots: tuple[str, ...]) -> str:
    """12 hex digits of the sha256 of the code (:func:`code_only`) of every module in the
    :func:`closure` of ``roots``."""
    digest = hashlib.sha256()
    for module in closure(roots):
        digest.update(module.encode() + b"\0" + _module_code(module).encode() + b"\0")
    return digest.hexdigest()[:12]


def code_only(source: str) -> str:
    """A module's syntax tree as text, docstrings removed (comments and formatting are never in it)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
