"""The machine a run measured, its versions, and how much of it other work took during each
measurement (other engineers' tests and other tenants of the host share it)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
from dataclasses import dataclass

import psutil

from resnet_mar.bench.results import Machine, OtherLoad

PACKAGES = ("torch", "torchvision", "torchserve", "torch-model-archiver", "onnxruntime")
PACKAGES += ("openvino", "nncf")


def machine() -> Machine:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown"
    ram_gib = round(psutil.virtual_memory().total / 2**30, 1)
    return Machine(cpu, os.cpu_count() or 1, ram_gib, platform.platform())


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    found["java"] = (java.stderr or java.stdout).splitlines()[0] if java.returncode == 0 else "?"
    return found


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass(frozen=True)
class CpuCounters:
    """CPU seconds so far: the machine's, steal, ours (this process and the server's)."""

    at: float
    machine_busy: float
    steal: float
    ours: float


def cpu_counters(server_pids: list[int] = ()) -> CpuCounters:
    """``server_pids``: ``RunningServer.group_pids``. A forwarder's per-connection children
    count once they exit (in their parent's children times)."""
    times, ours = psutil.cpu_times(), 0.0
    for pid in [os.getpid(), *server_pids]:
        with contextlib.suppress(psutil.NoSuchProcess):
            spent = psutil.Process(pid).cpu_times()
            ours += spent.user + spent.system
    busy = times.user + times.nice + times.system + times.irq + times.softirq
    return CpuCounters(time.monotonic(), busy, times.steal, ours)


def other_load(before: CpuCounters, after: CpuCounters) -> OtherLoad:
    """Cores other work used between two samples, and cores the hypervisor gave elsewhere."""
    elapsed = max(after.at - before.at, 1e-9)
    others = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    steal = (after.steal - before.steal) / elapsed
    return OtherLoad(round(max(0.0, others) / elapsed, 2), round(steal, 2))
