"""The mutation benchmark stays applicable: each mutation's text is found once in its file, and each
test it names exists, so that a refactor cannot turn a guarded bug into a "stale" line unseen
(running the mutations themselves takes minutes: ``python benchmarks/mutations.py``)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mutations() -> tuple:
    spec = importlib.util.spec_from_file_location("mutations", ROOT / "benchmarks" / "mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutations"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module.MUTATIONS


def test_every_mutation_applies_once_and_names_tests_that_exist() -> None:
    mutations = _mutations()
    assert len({m.name for m in mutations}) == len(mutations) >= 20
    for mutation in mutations:
        text = (ROOT / mutation.path).read_text()
        found = text.count(mutation.old)
        assert found == 1, f"{mutation.name}: its text is found {found} times in {mutation.path} (update the mutation)"
        assert mutation.new != mutation.old
        compile(text.replace(mutation.old, mutation.new), mutation.path, "exec")  # the mutant runs: a test fails on what it does
        for test in mutation.tests:
            path, _, name = test.partition("::")
            source = (ROOT / path).read_text()
            assert not name or re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{mutation.name}: no test {test}"
