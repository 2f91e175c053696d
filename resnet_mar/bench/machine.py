"""The machine a run measured: what it is, which versions ran, and how much of it other work
took during each measurement (other engineers' tests and other tenants of the host share it)."""

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

#: Packages whose versions a report names.
PACKAGES = (
    "torch",
    "torchvision",
    "torchserve",
    "torch-model-archiver",
    "onnxruntime",
    "openvino",
    "nncf",
)


def machine() -> Machine:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        ram_gib=round(psutil.virtual_memory().total / 2**30, 1),
        os=platform.platform(),
    )


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
    """CPU seconds so far: the whole machine's, the hypervisor's steal, and ours (this process
    plus the server's processes: TorchServe's tree and its forwarders)."""

    at: float
    machine_busy: float
    steal: float
    ours: float


def cpu_counters(server_pids: list[int] = ()) -> CpuCounters:
    """``server_pids``: every process of the server (``RunningServer.group_pids``). A forwarder's
    per-connection children count once they exit (in their parent's children times)."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + times.irq + times.softirq
    processes = [psutil.Process()]
    for pid in server_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    ours = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            spent = process.cpu_times()
            ours += spent.user + spent.system
    return CpuCounters(time.monotonic(), busy, times.steal, ours)


def other_load(before: CpuCounters, after: CpuCounters) -> OtherLoad:
    """Cores used by other work between two samples, and cores the hypervisor gave elsewhere
    (steal): a figure measured while either is well above zero is lower than this machine's."""
    elapsed = max(after.at - before.at, 1e-9)
    others = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    return OtherLoad(
        other_cores=round(max(0.0, others) / elapsed, 2),
        steal_cores=round((after.steal - before.steal) / elapsed, 2),
    )
