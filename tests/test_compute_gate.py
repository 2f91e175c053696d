"""The compute gate: while one worker holds it, no other process of the server gets it, and a
worker that dies holding it does not block the others."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_serving.compute_gate import ComputeGate, gate_path

#: Another worker: tries the gate file without waiting and prints whether it got it.
TRY_GATE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("acquired")
except BlockingIOError:
    print("blocked")
"""

#: A worker that takes the gate, says so, and waits to be killed while holding it.
HOLD_GATE = """
import sys, time
from resnet_serving.compute_gate import ComputeGate
with ComputeGate(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def other_worker_tries(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRY_GATE, str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.timeout(60)  # a gate that never opens would hang, not fail
def test_one_worker_at_a_time(tmp_path: Path) -> None:
    gate = ComputeGate(str(tmp_path / "gate.lock"))
    assert other_worker_tries(tmp_path / "gate.lock") == "acquired"
    with gate:
        assert other_worker_tries(tmp_path / "gate.lock") == "blocked"
    assert other_worker_tries(tmp_path / "gate.lock") == "acquired"


@pytest.mark.timeout(60)
def test_a_worker_that_dies_holding_the_gate_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "gate.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_GATE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert other_worker_tries(path) == "blocked"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with ComputeGate(str(path)):  # would hang if the dead worker still held it
        assert other_worker_tries(path) == "blocked"


@pytest.mark.timeout(60)
def test_the_gate_is_per_server_and_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """TorchServe keeps one server per TMPDIR and its workers inherit it: one gate each."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert gate_path() == str(tmp_path / f"resnet_mar_compute_{os.getuid()}.lock")
    with ComputeGate():
        fd = os.open(gate_path(), os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
