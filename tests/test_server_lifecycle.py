"""Integration: make serve and make stop (``python -m resnet_mar serve|stop``) as a user runs
them, on one CPU (``taskset -c 0``): the archive built on this machine resolves one thread and
answers the same; the owner scales through the management socket; stop answers what is queued
before it stops, and nothing of the server is left afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from resnet_mar.server_doors import REPO_ROOT, ServerFolder, config_addresses, host_and_port
from resnet_mar.torchserve import ServerState, _members, management_call
from tests.flood import Flood
from tests.reference import assert_served_like_reference
from tests.served_models import one_model_server_files

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 420, cpus: str | None = None) -> subprocess.CompletedProcess:
    """``python -m resnet_mar``, pinned to ``cpus`` (taskset) when given: TorchServe, its
    workers and its forwarders inherit the affinity."""
    pinned = ["taskset", "-c", cpus] if cpus else []
    return subprocess.run(
        [*pinned, sys.executable, "-m", "resnet_mar", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip


def workers(endpoint: str) -> list[str]:
    _, described = management_call(endpoint, "GET", "/models/resnet18")
    return [worker["status"] for model in described for worker in model["workers"]]


def test_serve_scale_drain_and_stop(
    model_store: Path, tmp_path: Path, photo_bytes, references
) -> None:
    store, config = one_model_server_files(model_store, tmp_path)
    folder = ServerFolder(tmp_path / "run")

    assert shutil.which("taskset"), "taskset (util-linux) is needed for this test"
    assert len(os.sched_getaffinity(0)) >= 2, "needs 2 CPUs to tell one CPU from all"
    served = cli(
        "serve", "--config", str(config), "--model-store", str(store), "--folder",
        str(folder.root), cpus="0",
    )  # fmt: skip
    try:
        assert served.returncode == 0, served.stdout + served.stderr
        state = ServerState.load(folder)
        assert (
            f"curl -T photo.jpg {state.endpoints.inference}/predictions/resnet18" in served.stdout
        )
        assert f"stop: make stop RUN={folder.root}" in served.stdout  # the folder it must stop

        # Built here on 2 CPUs, served on one: the worker resolves one thread, answers unchanged.
        model_log = (folder.logs / "model_log.log").read_text(errors="replace")
        assert "(torchscript): 1000 classes, threads=1," in model_log
        assert_served_like_reference(
            state.endpoints.inference, references["resnet18"], photo_bytes["coffee"]
        )
        again = cli(
            "serve",
            "--config",
            str(config),
            "--model-store",
            str(store),
            "--folder",
            str(folder.root),
        )
        assert again.returncode == 2 and "already runs" in again.stderr

        # The owner scales through the socket (what an operator does: README "Security").
        scale = "/models/resnet18?min_worker={n}&max_worker={n}&synchronous=true"
        assert management_call(state.endpoints.management, "PUT", scale.format(n=2), 120)[0] == 200
        assert workers(state.endpoints.management) == ["READY", "READY"]
        assert management_call(state.endpoints.management, "PUT", scale.format(n=1), 120)[0] == 200
        assert workers(state.endpoints.management) == ["READY"]

        groups = [state.group, *state.forwarders]
        flood = Flood(state.endpoints.inference, photo_bytes["rocket"], clients=3, kept_open=3)
        with flood:
            time.sleep(3)
            stopped = cli("stop", "--folder", str(folder.root), timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "queue drained" in stopped.stdout and "nothing of it is left" in stopped.stdout

    finally:
        if folder.state.exists():  # a failure above must not leave the server running
            cli("stop", "--folder", str(folder.root), timeout=120)
    answered = flood.outcomes.count("answered")
    failed = [o for o in flood.outcomes if o not in ("answered", "door closed")]
    assert answered > 0 and "door closed" in flood.outcomes, flood.outcomes
    assert failed == [], f"{len(failed)} accepted requests failed: {failed[:5]}"
    assert not any(_members(group) for group in groups)
    assert not folder.tmp.exists() and not folder.state.exists()
    again = cli("stop", "--folder", str(folder.root))  # idempotent: nothing left to stop
    assert again.returncode == 0 and "no server runs from" in again.stdout


def test_a_taken_port_fails_the_start_and_leaves_nothing_running(
    model_store: Path, tmp_path: Path
) -> None:
    """The inference port already taken: serve fails saying so, and no process of the server
    (Java, its workers, a door) outlives the failure."""
    store, config = one_model_server_files(model_store, tmp_path)
    folder = ServerFolder(tmp_path / "run")
    host, port = host_and_port(config_addresses(config.read_text())["inference"])
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((host, port))
        taken.listen()
        served = cli(
            "serve", "--config", str(config), "--model-store", str(store), "--folder",
            str(folder.root),
        )  # fmt: skip
    if served.returncode == 0:  # it must not, but then it must not outlive the test either
        cli("stop", "--folder", str(folder.root), timeout=120)
    assert served.returncode == 2 and "inference door did not open" in served.stderr, served
    assert not folder.state.exists()
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(folder.root)]
    assert left == [], f"processes of the failed server still run: {left}"
