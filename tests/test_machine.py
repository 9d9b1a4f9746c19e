"""The default number of processes: the usable cores, no more than memory holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mexit.machine import MEMORY_PER_JOB, cgroup_cores, cgroup_memory, job_count, meminfo_available, quota_cores, usable_cores

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def test_a_cpu_quota_gives_its_whole_cores() -> None:
    assert quota_cores(200000, 100000) == 2
    assert quota_cores(150000, 100000) == 1  # one and a half cores: one process
    assert quota_cores(50000, 100000) == 1  # half a core still runs one
    assert quota_cores(-1, 100000) is None  # cgroup v1's "no quota"


def test_a_containers_limits_are_read_from_either_cgroup_version(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert cgroup_cores(v2) is None and cgroup_memory(v2) is None  # no files: no limits
    (v2 / "cpu.max").write_text("400000 100000\n")
    (v2 / "memory.max").write_text(f"{8 * GIB}\n")
    (v2 / "memory.current").write_text(f"{GIB}\n")
    assert cgroup_cores(v2) == 4 and cgroup_memory(v2) == 7 * GIB
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_cores(v2) is None and cgroup_memory(v2) is None
    (v2 / "cpu.max").write_text("garbage\n")
    assert cgroup_cores(v2) is None  # unreadable: no limit, not an error
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    assert cgroup_cores(v1) == 3 and cgroup_memory(v1) == 3 * GIB
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory(v1) is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   16000000 kB\n")
    assert meminfo_available(meminfo) == 16000000 * 1024
    assert meminfo_available(tmp_path / "none") is None


def test_jobs_are_the_cores_that_memory_holds() -> None:
    assert job_count(16, 64 * MEMORY_PER_JOB) == 16
    assert job_count(64, 10 * MEMORY_PER_JOB + 1) == 10  # 64 cores, memory for 10
    assert job_count(4, MEMORY_PER_JOB - 1) == 1  # always one
    assert job_count(0, None) == 1
    assert job_count(8, None) == 8  # memory unknown: the cores


def test_the_makefile_asks_the_module_alone_before_the_venv_exists() -> None:
    """The Makefile runs it isolated (-I), on the standard library only; its answer is a whole number
    of processes within this machine's cores (memory may move while other tests run)."""
    out = subprocess.run([sys.executable, "-I", str(ROOT / "mexit" / "machine.py")], capture_output=True, text=True, check=True)
    assert 1 <= int(out.stdout) <= usable_cores()
    assert "-I mexit/machine.py" in (ROOT / "Makefile").read_text()
