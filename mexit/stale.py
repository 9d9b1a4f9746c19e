"""Which stored results were made by code other than today's: reported, never served.

Run keys hold the training path's fingerprint and analysis tables the fingerprint of the module that
computes them (:mod:`mexit.fingerprint`), so a result made by other code is never found by a page:
today's code asks for another key. What stays behind is dead weight in the store, and this module
names it: a run whose stored config keys to another key today, a table whose recorded fingerprint
is not today's (``mexit runs check``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mexit import checkpoint, fingerprint
from mexit.config import RunConfig
from mexit.store import RunStore, run_problem


def stale_runs(store: RunStore) -> pd.DataFrame:
    """Every finished run of ``store`` with ``key``, ``today`` (the key its stored config gets from
    today's code and settings) and ``current`` (the two agree: a page may read it)."""
    records = []
    for run_dir in store.run_dirs():
        if run_problem(run_dir) is not None:
            continue
        config = RunConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
        try:
            today = config.key()
        except ValueError:  # a network of someone's own whose module is not importable here: its key cannot be told
            today = "unknown (its backbone's module is not found here)"
        records.append({"key": run_dir.name, "today": today, "current": today == run_dir.name})
    return pd.DataFrame(records, columns=["key", "today", "current"])


def stale_tables(store: RunStore) -> pd.DataFrame:
    """Every analysis table of ``store`` with ``kind``, ``path``, ``code`` (the module that made
    it) and ``current`` (its recorded fingerprint is today's; a table with no record is not)."""
    records = []
    for path in sorted(Path(store.root / "analyses").glob("*/*.csv")):
        record_path = path.with_suffix(".json")
        record = checkpoint.read_json(record_path) if record_path.exists() else {}
        code = record.get("code")
        current = code is not None and fingerprint.module_path(code) is not None and record.get("fingerprint") == fingerprint.code_fingerprint((code,))
        records.append({"kind": path.parent.name, "path": str(path), "code": code, "current": current})
    return pd.DataFrame(records, columns=["kind", "path", "code", "current"])
