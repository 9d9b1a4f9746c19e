"""A researcher's own network as a backbone: ``py/<module>:<function>``.

``function`` in the importable ``module`` (on ``PYTHONPATH``, or installed) builds the network:
``function(num_classes=..., in_chans=..., img_size=..., **model.backbone_kwargs)`` returns an
``nn.Module`` that maps images (N, in_chans, img_size, img_size) to logits (N, num_classes). It is
split like a timm or torchvision model (:func:`mexit.models.generic.split_model`: blocks found in its
children, every cut verified) and refused with what failed where it cannot be. Its weights are the
function's: random, or loaded inside it; ``model.checkpoint`` loads a local state dict on top.

The module is imported by name in every process that builds the model (the book's training
workers, each notebook's kernel), so it must be importable there. Runs are keyed by the function's
name and by the source of its module, read from the file without importing it
(:func:`source_identity`): editing the module keys new runs instead of reusing runs of the old
network. Where the module belongs to a package, every module of that package counts; code it
imports from outside its package does not, so keep the network in one module or package. A process
that imported the module refuses to build it once its source has changed on disk (restart the
process, or a notebook's kernel): else it would train the old network under the new key.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from mexit.fingerprint import code_only

PREFIX = "py/"
"""The prefix of a backbone built by a function of the user's own (``py/<module>:<function>``)."""
_NAME = re.compile(r"^py/([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


def is_custom(name: str) -> bool:
    return name.startswith(PREFIX)


def parse(name: str) -> tuple[str, str]:
    """``(module, function)`` of ``py/<module>:<function>``; ValueError naming ``backbone`` otherwise."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"backbone={name!r}: a network of your own is named 'py/<module>:<function>' "
                         "(e.g. 'py/my_nets:wide_resnet'), the module importable where the model is built")
    return match.group(1), match.group(2)


def _module_files(module: str, name: str) -> list[Path]:
    """The source files whose code keys ``module``'s network: its own, or its top-level package's
    (a namespace package's too)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError) as error:
        raise ValueError(f"backbone={name!r}: cannot find module {module!r} ({error}); put it on PYTHONPATH or install it") from None
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise ValueError(f"backbone={name!r}: no module {module!r} is importable here; put it on PYTHONPATH or install it")
    if spec.submodule_search_locations:  # a package: every module of it
        return sorted(path for folder in spec.submodule_search_locations for path in Path(folder).rglob("*.py"))
    return [Path(spec.origin)]


def source_identity(name: str) -> str:
    """12 hex digits naming the code of ``py/<module>:<function>``'s module (its package's modules,
    where it is in one), each as its syntax tree without docstrings (:func:`mexit.fingerprint.code_only`),
    read without importing it; what a run's key holds of a network of the user's own. Files are
    parsed again only when their size or modification time changed."""
    module, _ = parse(name)
    files = _module_files(module, name)
    return _hash_files(name, tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files))


@lru_cache(maxsize=64)
def _hash_files(name: str, files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        try:
            code = code_only(Path(path).read_text())
        except (SyntaxError, UnicodeDecodeError) as error:
            raise ValueError(f"backbone={name!r}: cannot read the code of {path} ({type(error).__name__}: {error})") from None
        digest.update(Path(path).name.encode())
        digest.update(code.encode())
    return digest.hexdigest()[:12]


_IMPORTED: dict[str, str] = {}
"""The source identity of each module this process imported a network from, when it first did."""


def factory(name: str) -> Callable[..., nn.Module]:
    """The function ``py/<module>:<function>`` names, imported; ValueError naming ``backbone`` where
    the module does not import, holds no such function, or changed on disk since this process
    imported it (the network built would not be the one the key names)."""
    module_name, function = parse(name)
    identity = source_identity(name)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"backbone={name!r}: importing {module_name!r} failed ({type(error).__name__}: {error})") from error
    if _IMPORTED.setdefault(module_name, identity) != identity:
        raise ValueError(f"backbone={name!r}: module {module_name!r} changed on disk since this process imported it; "
                         "restart the process (a notebook: its kernel) so that it builds the network its runs' keys name")
    found = getattr(module, function, None)
    if not callable(found):
        raise ValueError(f"backbone={name!r}: module {module_name!r} has no function {function!r}")
    return found


def create(name: str, num_classes: int, in_chans: int, img_size: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """The network ``py/<module>:<function>`` builds for these classes and images; ValueError naming
    ``backbone`` where the function fails (its own error chained, for its traceback) or returns
    something other than a module."""
    build = factory(name)
    called = getattr(build, "__name__", repr(build))
    try:
        model = build(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    except Exception as error:
        raise ValueError(f"backbone={name!r}: {called}(num_classes={num_classes}, in_chans={in_chans}, "
                         f"img_size={img_size}, **{dict(kwargs)}) failed ({type(error).__name__}: {error})") from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"backbone={name!r}: {called} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
