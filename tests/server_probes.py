"""What the integration tests read off a running server: its workers and its processes."""

from __future__ import annotations

import os
from pathlib import Path

from resnet_mar.torchserve import RunningServer
from tests.served_models import MODELS


def worker_pids(server: RunningServer, models: list[str] = MODELS) -> dict[str, list[int]]:
    pids = {}
    for name in models:
        _, described = server.management("GET", f"/models/{name}")
        pids[name] = sorted(w["pid"] for m in described for w in m["workers"])
    return pids


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def resident_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start a process's VmHWM afresh from its VmRSS (Linux >= 4.0, as its owner or root), so
    a test measures its own peak, not one an earlier test left."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def java_pid(server: RunningServer) -> int:
    return int((server.folder.tmp / ".model_server.pid").read_text().strip())


def open_files(pid: int) -> list[str]:
    """What each of a process's descriptors points at. A live server opens and closes files
    while we list them: a descriptor gone before it is read held nothing worth checking."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of every socket a process holds open."""
    return {
        target[len("socket:[") : -1] for target in open_files(pid) if target.startswith("socket:[")
    }


def listening_tcp(net_dir: Path) -> dict[str, int]:
    """Listening TCP sockets of a network namespace (/proc/<pid>/net): inode -> port."""
    found = {}
    for table in ("tcp", "tcp6"):
        for line in (net_dir / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found
