"""The machine a run measured, its versions, and how much of it other work took during each
measurement (other engineers' tests and other tenants of the host share it)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import time
import typing
from dataclasses import dataclass

import psutil

from resnet_mar.bench.results import CpuProfile, Machine, OtherLoad

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
            ours += _cpu_seconds(psutil.Process(pid))
    return CpuCounters(time.monotonic(), _busy(times), times.steal, ours)


def _busy(times: typing.Any) -> float:
    """The CPU seconds in ``psutil.cpu_times()`` that some process (or interrupt) used."""
    return times.user + times.nice + times.system + times.irq + times.softirq


def _cpu_seconds(process: psutil.Process, children: bool = False) -> float:
    spent = process.cpu_times()
    own = spent.user + spent.system
    return own + spent.children_user + spent.children_system if children else own


def other_load(before: CpuCounters, after: CpuCounters) -> OtherLoad:
    """Cores other work used between two samples, and cores the hypervisor gave elsewhere."""
    elapsed = max(after.at - before.at, 1e-9)
    others = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    steal = (after.steal - before.steal) / elapsed
    return OtherLoad(round(max(0.0, others) / elapsed, 2), round(steal, 2))


#: The parts of a served point a CPU profile tells apart, each recognised by its command line:
#: TorchServe's Java frontend, its Python workers, the doors in front of it (the forwarders and
#: the front door), and the load generator (this process).
ROLES = ("worker", "frontend", "doors", "load client")


@dataclass(frozen=True)
class CpuSample:
    at: float
    machine_busy: float
    by_role: dict[str, float]


def role_of(command: list[str]) -> str | None:
    line = " ".join(command)
    if "model_service_worker" in line:
        return "worker"
    if "model-server.jar" in line or "org.pytorch.serve" in line:
        return "frontend"
    if (command and os.path.basename(command[0]) == "socat") or "resnet_mar.front_door" in line:
        return "doors"
    return None


def cpu_sample(server_pids: list[int]) -> CpuSample:
    """CPU seconds so far of the machine and of each role. A forwarder's children (one per
    connection, in its process group) count as they run, and once they exit in their parent's
    children times."""
    by_role = dict.fromkeys(ROLES, 0.0)
    for pid in server_pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process = psutil.Process(pid)
            role = role_of(process.cmdline())
            if role is not None:
                by_role[role] += _cpu_seconds(process, children=role == "doors")
    by_role["load client"] = _cpu_seconds(psutil.Process())
    return CpuSample(time.monotonic(), _busy(psutil.cpu_times()), by_role)


def cpu_profile(start: CpuSample, end: CpuSample, answers: int) -> CpuProfile:
    elapsed = max(end.at - start.at, 1e-9)
    per_answer = {
        role: round((end.by_role[role] - start.by_role[role]) / max(answers, 1) * 1000, 3)
        for role in ROLES
    }
    return CpuProfile(round((end.machine_busy - start.machine_busy) / elapsed, 3), per_answer)
