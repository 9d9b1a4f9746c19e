"""How many single-threaded processes this machine can run at once: the default of ``make book``'s and
``make test``'s ``JOBS`` and of ``mexit sweep``'s local processes.

The cores this process may use (its CPU affinity, capped by a container's CPU quota, which ``nproc``
ignores), and no more processes than the available memory holds at ``MEMORY_PER_JOB`` each (a
container's memory limit counts, which ``/proc/meminfo`` does not show): a quick-profile training
process peaks at about 1.4 GiB. Both cgroup versions are read (v2's ``cpu.max`` and ``memory.max``,
v1's ``cpu.cfs_quota_us`` and ``memory.limit_in_bytes``); a file that is missing or unreadable sets
no limit. Standard library only, so that the Makefile can ask before the virtual environment exists:
``python3 -I mexit/machine.py`` prints the number.
"""
from __future__ import annotations

import os
from pathlib import Path

MEMORY_PER_JOB = 2 << 30
"""Bytes of memory each job is given (a quick-profile training process peaks at about 1.4 GiB)."""
CGROUP = Path("/sys/fs/cgroup")
"""Where this process's cgroup limits are read (a container's own, under a cgroup namespace)."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def quota_cores(quota: int, period: int) -> int | None:
    """The whole cores a CPU quota of ``quota`` microseconds a ``period`` allows, at least 1; None for
    no quota (a quota below 0, cgroup v1's -1)."""
    if quota < 0 or period <= 0:
        return None
    return max(1, quota // period)


def cgroup_cores(root: Path = CGROUP) -> int | None:
    """The cores the cgroup's CPU quota allows (v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us``); None without one."""
    v2 = _read(root / "cpu.max")
    try:
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            return None if quota == "max" else quota_cores(int(quota), int(period))
        v1_quota, v1_period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
        return quota_cores(int(v1_quota), int(v1_period)) if v1_quota and v1_period else None
    except ValueError:
        return None


def cgroup_memory(root: Path = CGROUP) -> int | None:
    """Bytes the cgroup may still use (v2 ``memory.max`` less ``memory.current``, else v1
    ``memory/memory.limit_in_bytes`` less its usage); None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read(root / limit_file)
        if limit is None:
            continue
        try:
            usage = int(_read(root / usage_file) or 0)
            return None if limit == "max" or int(limit) >= 1 << 60 else max(0, int(limit) - usage)  # v1 writes "no limit" as a huge number
        except ValueError:
            return None
    return None


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory available to new processes on the machine (``MemAvailable``); None where unknown."""
    for line in (_read(meminfo) or "").splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            try:
                return int(value.split()[0]) * 1024
            except (ValueError, IndexError):
                return None
    return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, within the cgroup's CPU quota if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cores()
    return min(cores, quota) if quota else cores


def available_memory() -> int | None:
    """Bytes of memory new processes may use: the machine's available memory, within the cgroup's limit if any."""
    known = [m for m in (meminfo_available(), cgroup_memory()) if m is not None]
    return min(known) if known else None


def job_count(cores: int, memory: int | None, memory_per_job: int = MEMORY_PER_JOB) -> int:
    """One process a core, as many as ``memory`` holds at ``memory_per_job`` each; at least 1."""
    fits = cores if memory is None else memory // memory_per_job
    return max(1, min(cores, fits))


def default_jobs() -> int:
    """This machine's default number of single-threaded processes."""
    return job_count(usable_cores(), available_memory())


if __name__ == "__main__":
    print(default_jobs())
