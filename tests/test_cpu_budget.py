"""Threads are resolved where the worker runs: from its CPU affinity and its cgroup's quota."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_serving.cpu_budget import cgroup_cpu_quota, usable_cpus


def fake_proc(tmp_path: Path, membership: str, mounts: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(membership)
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_quota_of_the_group_and_its_ancestors(tmp_path: Path) -> None:
    """A pod's limit sits on an ancestor of the container's group: the tightest one counts."""
    root = tmp_path / "cgroup"
    write(root / "kubepods", cpu_max="250000 100000\n")
    write(root / "kubepods" / "pod1", cpu_max="150000 100000\n")
    write(root / "kubepods" / "pod1" / "ctr", cpu_max="max 100000\n")
    proc = fake_proc(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        [f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"],
    )
    assert cgroup_cpu_quota(proc) == 1.5
    assert usable_cpus(proc) == 1  # rounded down: two threads would be throttled


def test_cgroup_v1_quota_seen_from_inside_a_container(tmp_path: Path) -> None:
    """Inside a container the cpu hierarchy is mounted at the container's own group."""
    mount = tmp_path / "cpu,cpuacct"
    write(mount, cpu_cfs_quota_us="100000\n", cpu_cfs_period_us="100000\n")
    proc = fake_proc(
        tmp_path,
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        [f"40 25 0:30 /docker/abc {mount} rw - cgroup cgroup rw,cpu,cpuacct"],
    )
    assert cgroup_cpu_quota(proc) == 1.0


def test_no_quota_means_the_affinity(tmp_path: Path) -> None:
    mount = tmp_path / "cpu"
    write(mount, cpu_cfs_quota_us="-1\n", cpu_cfs_period_us="100000\n")
    proc = fake_proc(tmp_path, "4:cpu:/\n", [f"40 25 0:30 / {mount} rw - cgroup cgroup rw,cpu"])
    assert cgroup_cpu_quota(proc) is None
    assert usable_cpus(proc) == len(os.sched_getaffinity(0))


def test_unreadable_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "no-such-proc") is None


def test_affinity_of_a_real_process_limits_the_threads() -> None:
    """A worker started under ``taskset -c 0`` gets one thread, whatever the machine has."""
    taskset = shutil.which("taskset")
    assert taskset, "taskset (util-linux) is needed for this test"
    code = "from resnet_serving.cpu_budget import usable_cpus; print(usable_cpus())"
    done = subprocess.run(
        [taskset, "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this machine has one CPU: the test cannot tell 1 from all")
