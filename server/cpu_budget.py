"""How many torch threads a container's CPU budget allows, and an exec wrapper that applies it.

Inside a container `os.cpu_count()` reports every core of the host, so torch starts one thread
per host core and a container limited to 2 CPUs spends its quota on contention (ml-agents#4471).

    python -m gradserve.server.cpu_budget COMMAND [ARG...]

sets GRADSERVE_TORCH_THREADS (read by the server) and OMP_NUM_THREADS / MKL_NUM_THREADS (read
by torch at start, so the trainer follows too) unless already set, then replaces itself with
COMMAND, so signals reach COMMAND directly. The image's ENTRYPOINT is this wrapper.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ENV_TORCH_THREADS = "GRADSERVE_TORCH_THREADS"
THREAD_VARIABLES = (ENV_TORCH_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs of quota per period (cgroup v2 cpu.max or v1 cfs quota); None when unlimited."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup_root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """Cores this process may run on (a cpuset narrows them), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def torch_threads(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Whole CPUs the budget allows, at least one: a fractional CPU is not worth a thread."""
    cpus = available_cpus()
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cpus = min(cpus, math.floor(limit))
    return max(1, cpus)


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    threads = str(torch_threads())
    if not command:
        print(threads)
        return 0
    for name in THREAD_VARIABLES:
        if not os.environ.get(name):
            os.environ[name] = threads
    os.execvp(command[0], command)  # noqa: S606 - the command is the container's own CMD
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
