"""Shared test settings: offline, single-threaded, deterministic, and a run store of the session's own.

``MEXIT_RUNS`` points at a fresh folder, so that the notebook tests (nbval) and the book test share
the tiny runs they train and never touch a user's store.
"""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["MEXIT_RUNS"] = tempfile.mkdtemp(prefix="mexit-test-runs-")

import torch  # noqa: E402

torch.set_num_threads(1)
