"""How many CPUs this worker may really use: resolved where the model runs, never at build time.

An archive built on a 16-core machine and served in a 2-CPU pod must not start 16 threads: on
2 CPUs they would oversubscribe the cores exactly as TorchServe's stock set-up does. The budget
is the smaller of the CPUs the process may be scheduled on (``sched_getaffinity``: taskset,
cpusets) and the CPU quota of its cgroup and every ancestor (Kubernetes CPU limits: cgroup v2
``cpu.max``, cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded down: a quota of
1.5 CPUs runs one thread at full speed rather than two that get throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(proc: Path = Path("/proc/self")) -> int:
    """CPUs this process may use, at least 1."""
    budget = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc)
    if quota is not None:
        budget = min(budget, math.floor(quota))
    return max(1, budget)


def cgroup_cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup path, or None when unlimited."""
    quotas = [
        quota
        for mount, group in _cgroup_cpu_folders(proc)
        for folder in _path_to_root(mount, group)
        if (quota := _quota_in(folder)) is not None
    ]
    return min(quotas, default=None)


def _cgroup_cpu_folders(proc: Path) -> list[tuple[Path, str]]:
    """(mount point, the process's group relative to it) for each hierarchy that holds the cpu
    controller: the unified (v2) one and a v1 one mounted with ``cpu``."""
    try:
        membership = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    groups: dict[str, str] = {}
    for line in membership:  # "0::/a/b" (v2), "4:cpu,cpuacct:/a/b" (v1)
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["(unified)"]:
            groups[controller] = path
    found = []
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, fstype_and_more = before.split(), after.split()
        if len(fields) < 5 or len(fstype_and_more) < 3:
            continue
        mount_root, mount_point = fields[3], fields[4]
        fstype, options = fstype_and_more[0], fstype_and_more[2].split(",")
        if fstype == "cgroup2" and "(unified)" in groups:
            group = groups["(unified)"]
        elif fstype == "cgroup" and "cpu" in options and "cpu" in groups:
            group = groups["cpu"]
        else:
            continue
        relative = os.path.relpath(group, mount_root) if group.startswith(mount_root) else "."
        found.append((Path(mount_point), relative))
    return found


def _path_to_root(mount: Path, relative: str) -> list[Path]:
    """The group's folder and each ancestor up to the mount point (limits nest)."""
    folder = (mount / relative).resolve()
    chain = [folder]
    while folder != mount and mount in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def _quota_in(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").exists():  # v2: "max 100000" or "150000 100000"
            limit, period = (folder / "cpu.max").read_text().split()
            return None if limit == "max" else int(limit) / int(period)
        limit = int((folder / "cpu.cfs_quota_us").read_text())  # v1: -1 = no limit
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit <= 0 or period <= 0 else limit / period
