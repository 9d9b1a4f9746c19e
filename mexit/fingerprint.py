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
    """A module's syntax tree as text (:func:`tree_text`), every statement that is a bare string
    removed: a module's, class's or function's docstring and those written under names, which do
    nothing (comments and formatting are never in the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            kept = [s for s in statements if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))]
            if len(kept) < len(statements):
                setattr(node, field, kept or ([ast.Pass()] if field == "body" else []))
    return tree_text(tree)


def tree_text(node: object) -> str:
    """A syntax tree as text, the same on every Python version that parses it alike: each node's
    fields but those that are None or empty lists, which newer versions add (3.12's
    ``type_params``) and :func:`ast.dump` prints or not by version."""
    if isinstance(node, ast.AST):
        fields = ", ".join(f"{name}={tree_text(value)}" for name, value in ast.iter_fields(node) if value is not None and not (isinstance(value, list) and not value))
        return f"{type(node).__name__}({fields})"
    if isinstance(node, list):
        return "[" + ", ".join(tree_text(item) for item in node) + "]"
    return repr(node)
