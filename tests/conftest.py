"""Shared test settings: offline, single-threaded, deterministic, and a run store of the session's own.

``MEXIT_RUNS`` points at a fresh folder, so that the notebook tests (nbval) and the book test share
the tiny runs they train and never touch a user's store. Under pytest-xdist (``make test`` runs one
worker a core) the workers share the folder the controlling process made: this module is loaded
there first, and the workers inherit its environment (the store's locks let one process train a run
that several ask for).
"""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" not in os.environ or "MEXIT_TEST_RUNS" not in os.environ:
    os.environ["MEXIT_TEST_RUNS"] = tempfile.mkdtemp(prefix="mexit-test-runs-")
os.environ["MEXIT_RUNS"] = os.environ["MEXIT_TEST_RUNS"]

import torch  # noqa: E402

torch.set_num_threads(1)
