"""mexit keeps freed CPU memory for reuse: re-allocating maps of several MiB faults no new pages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import mexit
from mexit.memory import keep_freed_memory

# Three 8 MiB tensors made and freed each round, as a training step frees and re-makes its maps.
# Without mexit's thresholds the child sets glibc's initial ones (128 KiB) explicitly: glibc raises
# them by itself after some frees, depending on where small blocks happened to land.
ROUNDS = """
import ctypes, resource, torch, mexit
from mexit import memory
if not mexit.KEEPS_FREED_MEMORY:
    mallopt = ctypes.CDLL(None).mallopt
    mallopt(memory._M_MMAP_THRESHOLD, 128 << 10), mallopt(memory._M_TRIM_THRESHOLD, 128 << 10)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    maps = [torch.ones(2 << 20) for _ in range(3)]; del maps
start = faults()
for _ in range(10):
    maps = [torch.ones(2 << 20) for _ in range(3)]; del maps
print(mexit.KEEPS_FREED_MEMORY, (faults() - start) / 10)
"""


def _faults_per_round(keep: str) -> tuple[bool, float]:
    env = {**os.environ, "MEXIT_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_are_reused_without_new_page_faults() -> None:
    assert mexit.KEEPS_FREED_MEMORY  # this test process imported mexit
    applied, kept = _faults_per_round("1")
    not_applied, default = _faults_per_round("0")
    assert applied and not not_applied
    assert kept < 50  # 24 MiB re-allocated per round: 6,144 pages, none of them faulted again
    assert default > 1000  # glibc's initial thresholds map them afresh each time


def test_opting_out_leaves_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEXIT_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.setenv("MEXIT_KEEP_FREED_MEMORY", "1")
    assert keep_freed_memory() is sys.platform.startswith("linux")
