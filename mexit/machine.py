"""How many single-threaded processes this machine can run at once: the default of ``make book``'s and
``make test``'s ``JOBS`` and of ``mexit sweep``'s local processes.

The cores this process may use (its CPU affinity, capped by a container's CPU quota, which
``nproc`` ignores), and no more processes than the available memory holds at ``MEMORY_PER_JOB`` each:
a quick-profile training process peaks at about 1.4 GiB. Standard library only, so that the Makefile
can ask before the virtual environment exists: ``python3 -I mexit/machine.py`` prints the number.
"""
from __future__ import annotations

import os
from pathlib import Path

MEMORY_PER_JOB = 2 << 30
"""Bytes of memory each job is given (a quick-profile training process peaks at about 1.4 GiB)."""


def quota_cores(cpu_max: str) -> int | None:
    """The cores a cgroup v2 ``cpu.max`` line (``"<quota> <period>"`` or ``"max <period>"``) allows,
    rounded down, at least 1; None where it sets no quota."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, int(quota) // int(period))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, within the cgroup's CPU quota if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    quota = quota_cores(cpu_max.read_text()) if cpu_max.is_file() else None
    return min(cores, quota) if quota else cores


def available_memory() -> int | None:
    """Bytes of memory available to new processes (``MemAvailable`` of /proc/meminfo); None where unknown."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024
    return None


def job_count(cores: int, memory: int | None, memory_per_job: int = MEMORY_PER_JOB) -> int:
    """One process a core, as many as ``memory`` holds at ``memory_per_job`` each; at least 1."""
    fits = cores if memory is None else memory // memory_per_job
    return max(1, min(cores, fits))


def default_jobs() -> int:
    """This machine's default number of single-threaded processes."""
    return job_count(usable_cores(), available_memory())


if __name__ == "__main__":
    print(default_jobs())
