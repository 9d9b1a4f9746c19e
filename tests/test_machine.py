"""The default number of processes: the usable cores, no more than memory holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mexit.machine import MEMORY_PER_JOB, available_memory, default_jobs, job_count, quota_cores, usable_cores

ROOT = Path(__file__).resolve().parents[1]


def test_a_cgroup_quota_gives_its_whole_cores() -> None:
    assert quota_cores("200000 100000\n") == 2
    assert quota_cores("150000 100000") == 1  # one and a half cores: one process
    assert quota_cores("50000 100000") == 1  # half a core still runs one
    assert quota_cores("max 100000") is None


def test_jobs_are_the_cores_that_memory_holds() -> None:
    assert job_count(16, 64 * MEMORY_PER_JOB) == 16
    assert job_count(64, 10 * MEMORY_PER_JOB + 1) == 10  # 64 cores, memory for 10
    assert job_count(4, MEMORY_PER_JOB - 1) == 1  # always one
    assert job_count(0, None) == 1
    assert job_count(8, None) == 8  # memory unknown: the cores


def test_this_machine_and_the_makefile_agree() -> None:
    cores, memory = usable_cores(), available_memory()
    assert cores >= 1 and (memory is None or memory > 0)
    assert 1 <= default_jobs() <= cores
    # The Makefile asks before the venv exists: the module runs alone, isolated, on the standard library.
    out = subprocess.run([sys.executable, "-I", str(ROOT / "mexit" / "machine.py")], capture_output=True, text=True, check=True)
    assert int(out.stdout) == default_jobs()
