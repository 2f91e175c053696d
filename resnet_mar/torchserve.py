"""Start, watch and stop TorchServe: one place for what ``make serve``, ``make stop``, the tests
and the benchmark do.

A server gets its own folder (sockets, TMPDIR and TEMP, logs, working directory) and, unless
asked otherwise, its own network namespace (server_doors.py says which doors lead in). Stopping
drains: the public doors close first, queued requests are answered, then TorchServe's Java
frontend gets SIGTERM and is waited for, and nothing of the server outlives ``stop``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resnet_mar.server_doors import (
    LISTENING,
    REPO_ROOT,
    DoorError,
    ServerFolder,
    UnixHTTPConnection,
    config_addresses,
    forwarder_command,
    free_port,
    front_door_command,
    grpc_public_address,
    host_and_port,
    http_exchange,
    isolated_config,
    isolation_prefix,
    public_addresses,
    without_namespace,
)
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

__all__ = ["REPO_ROOT", "RunningServer", "ServerError", "private_server"]


class ServerError(RuntimeError):
    """TorchServe could not be started, got no models ready, or could not be stopped; says why."""


@dataclass(frozen=True)
class Endpoints:
    """How to reach a running server: inference and metrics URLs, management either as a unix
    socket (``unix:/path``) or a URL, and the Open Inference gRPC service (host:port, "" when
    the server has none)."""

    inference: str
    metrics: str
    management: str
    grpc: str = ""


@dataclass
class ServerState:
    """What it takes to find a running server again (``make serve`` saves it for ``make stop``):
    its folder, TorchServe's process group and the forwarders' process groups."""

    folder: str
    endpoints: Endpoints
    group: int
    forwarders: list[int] = field(default_factory=list)

    def save(self) -> None:
        ServerFolder(Path(self.folder)).state.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: ServerFolder) -> ServerState:
        data = json.loads(folder.state.read_text())
        return cls(**{**data, "endpoints": Endpoints(**data["endpoints"])})


@dataclass
class RunningServer:
    state: ServerState
    process: subprocess.Popen
    #: Why TorchServe runs without a network namespace of its own ("" when it has one), and
    #: what that leaves reachable: the line make serve prints.
    exposure: str = ""

    @property
    def endpoints(self) -> Endpoints:
        return self.state.endpoints

    @property
    def folder(self) -> ServerFolder:
        return ServerFolder(Path(self.state.folder))

    @property
    def log_file(self) -> Path:
        return self.folder.logs / "ts_log.log"

    def management(self, method: str, target: str) -> tuple[int, Any]:
        return management_call(self.endpoints.management, method, target)

    def group_pids(self) -> list[int]:
        """Every process of the server: TorchServe's group (Java, workers) and the forwarders'."""
        return [
            pid for group in (self.state.group, *self.state.forwarders) for pid in _members(group)
        ]


def torchserve_executable() -> str:
    """The ``torchserve`` next to this interpreter (the project venv), else on PATH."""
    local = Path(sys.executable).with_name("torchserve")
    found = str(local) if local.exists() else shutil.which("torchserve")
    if not found:
        raise ServerError("torchserve is not installed: run 'make setup'")
    if not shutil.which("java"):
        raise ServerError("java is not on PATH: TorchServe needs Java >= 17 ('make setup')")
    return found


def management_call(
    endpoint: str, method: str, target: str, timeout: float = 10
) -> tuple[int, Any]:
    """One management API call, over the owner's unix socket or TCP: status and decoded JSON."""
    if endpoint.startswith("unix:"):
        connection = UnixHTTPConnection(Path(endpoint.removeprefix("unix:")), timeout)
    else:
        connection = http.client.HTTPConnection(*host_and_port(endpoint), timeout=timeout)
    return http_exchange(connection, method, target)


def described_models(endpoint: str) -> dict[str, list[dict[str, Any]]]:
    """Every registered model's description (one entry per version), by name."""
    _, listed = management_call(endpoint, "GET", "/models")
    return {
        entry["modelName"]: management_call(endpoint, "GET", f"/models/{entry['modelName']}")[1]
        for entry in (listed or {}).get("models", [])
    }


def model_status(endpoint: str) -> dict[str, list[str]]:
    """Worker statuses per registered model, from the management API."""
    return {
        name: [worker["status"] for model in described for worker in model.get("workers", [])]
        for name, described in described_models(endpoint).items()
    }


def pending_requests(endpoint: str) -> int:
    """Requests queued for every model, not yet handed to a worker."""
    return sum(
        model.get("jobQueueStatus", {}).get("pendingRequests", 0)
        for described in described_models(endpoint).values()
        for model in described
    )


def wait_until_ready(
    endpoint: str,
    expected: list[str],
    *,
    timeout_s: float,
    log_file: Path | None = None,
    process: subprocess.Popen | None = None,
) -> dict[str, list[str]]:
    """Block until every expected model has all its workers READY; fail with the log's tail, at
    once when a model failed to load (TorchServe would retry for ever)."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"TorchServe exited with {process.returncode}{log_tail(log_file)}")
        try:
            statuses = model_status(endpoint)
        except (OSError, http.client.HTTPException, ValueError):
            statuses = {}
        if all(statuses.get(m) and set(statuses[m]) == {"READY"} for m in expected):
            return statuses
        failed = load_failures(log_file, expected)
        if failed:
            raise ServerError(
                f"loading {', '.join(failed)} failed{log_tail(model_log(log_file), 60)}"
            )
        time.sleep(0.5)
    raise ServerError(
        f"models not READY after {timeout_s:.0f}s: expected {expected}, saw {statuses}"
        f"{log_tail(log_file)}"
    )


def load_failures(log_file: Path | None, expected: list[str]) -> list[str]:
    """Models whose worker failed to load, as TorchServe's log says."""
    if log_file is None or not log_file.exists():
        return []
    text = log_file.read_text(errors="replace")
    return [name for name in expected if f"Load model failed: {name}," in text]


def model_log(log_file: Path | None) -> Path | None:
    """The workers' own log next to TorchServe's (where a handler's traceback is)."""
    return None if log_file is None else log_file.with_name("model_log.log")


def log_tail(log_file: Path | None, lines: int = 40) -> str:
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last {len(tail)} lines of {log_file} ---\n" + "\n".join(tail)


def server_environment(
    inherited: Mapping[str, str], worker_environment: Mapping[str, str], folder: ServerFolder
) -> dict[str, str]:
    """TorchServe's environment: the caller's, with the workers' tuning exactly as the setup
    asks. Tuning variables the caller happens to carry are dropped first, so a setup without
    them (the benchmark's stock baseline, run from a benchmark that sets GOMP_SPINCOUNT for
    its own in-process limits) really runs without them."""
    env = {k: v for k, v in inherited.items() if k not in WORKER_ENVIRONMENT}
    return {
        **env,
        **worker_environment,
        # TMPDIR: TorchServe's pid file and the handler's compute gate; TEMP: worker sockets
        # and extracted archives (both per server, out of the shared /tmp).
        "TMPDIR": str(folder.tmp),
        "TEMP": str(folder.tmp),
        "LOG_LOCATION": str(folder.logs),
        "METRICS_LOCATION": str(folder.logs),
    }


def start_server(
    model_store: Path,
    models: list[str],
    folder: ServerFolder,
    config_text: str,
    *,
    worker_environment: Mapping[str, str] = WORKER_ENVIRONMENT,
    isolated: bool = True,
    isolation: str = "auto",
    public_host: str | None = None,
) -> RunningServer:
    """Start TorchServe serving ``models`` (``name=file.mar`` words, or ``all``) from its own
    folder; returns at once (see ``wait_until_ready``).

    ``isolated``: the doors of server_doors.py (HTTP on unix sockets, forwarded), or TorchServe's
    own TCP addresses (the benchmark's stock set-up). ``isolation``: whether it also gets a
    network namespace (server_doors.ISOLATION_MODES). ``public_host``: the public doors on that
    host instead of config.properties' loopback addresses (a container's 0.0.0.0)."""
    folder.create()
    if folder.state.exists():
        raise ServerError(f"a server already runs from {folder.root}: stop it first (make stop)")
    try:
        public = public_addresses(config_text, public_host) if isolated else {}
        prefix, no_namespace = isolation_prefix(isolation) if isolated else ([], None)
        grpc = grpc_public_address(config_text, public_host) if isolated else None
        commands = {
            door: front_door_command(public[door], folder, model_store, grpc)
            if door == "inference"
            else forwarder_command(public[door], folder.socket(door))
            for door in public
        }
    except DoorError as err:
        raise ServerError(str(err)) from None
    folder.config.write_text(isolated_config(config_text, folder) if isolated else config_text)
    env = server_environment(os.environ, worker_environment, folder)
    command = [
        *prefix,
        torchserve_executable(),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store.resolve()),
        "--models",
        *models,
        "--ts-config",
        str(folder.config),
    ]
    with open(folder.logs / "torchserve.out", "wb") as output:
        process = subprocess.Popen(
            command, cwd=folder.root, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    management = (
        f"unix:{folder.socket('management')}" if isolated else _address(config_text, "management")
    )
    endpoints = Endpoints(
        inference=public.get("inference") or _address(config_text, "inference"),
        metrics=public.get("metrics") or _address(config_text, "metrics"),
        management=management,
        grpc=grpc or "",
    )
    state = ServerState(str(folder.root), endpoints, process.pid)
    state.save()
    try:
        for door, command in commands.items():
            state.forwarders.append(_start_forwarder(door, command, folder).pid)
            state.save()
    except ServerError:
        # A door that cannot open (its port taken): nothing of the server may outlive the error.
        stop_server(state, drain_s=0, exit_s=10)
        raise
    exposure = without_namespace(config_text, no_namespace) if no_namespace else ""
    return RunningServer(state, process, exposure)


def _start_forwarder(door: str, command: list[str], folder: ServerFolder) -> subprocess.Popen:
    """Start a door's relay and return once it listens (the front door says so in its log once
    every port of it is bound; socat binds at once), or fail with what it said on exiting."""
    log = folder.logs / f"forwarder-{door}.out"
    with open(log, "wb") as output:
        forwarder = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + (30 if door == "inference" else 0.2)
    while forwarder.poll() is None and time.monotonic() < deadline:
        if door == "inference" and LISTENING in log.read_text(errors="replace"):
            return forwarder
        time.sleep(0.05)
    if forwarder.poll() is None and door != "inference":
        return forwarder
    said = log.read_text(errors="replace").strip().splitlines()
    raise ServerError(f"the {door} door did not open: {said[-1] if said else 'no output'}")


def _address(config_text: str, door: str) -> str:
    address = config_addresses(config_text).get(door)
    if address is None:
        raise ServerError(f"config.properties lacks {door}_address")
    return address


@dataclass(frozen=True)
class StopReport:
    drained: bool
    pending_at_close: int
    java_exit_s: float
    killed: bool

    def __str__(self) -> str:
        drain = "queue drained" if self.drained else "queue NOT drained before the deadline"
        java = "killed after the deadline" if self.killed else f"exited in {self.java_exit_s:.1f} s"
        return f"{drain} ({self.pending_at_close} waiting when the doors closed); TorchServe {java}"


def stop_server(state: ServerState, *, drain_s: float = 30, exit_s: float = 30) -> StopReport:
    """Close the public doors, answer what is queued, stop Java, and wait until no process of
    the server is left; then remove its temporary files (extracted archives, worker sockets).

    The doors stop first and Java only once they have exited: the front door answers every
    request it accepted, and tells kept-open connections to close, before it exits."""
    folder = ServerFolder(Path(state.folder))
    for forwarder in state.forwarders:  # the listener only: open connections keep relaying
        with suppress(ProcessLookupError):
            os.kill(forwarder, signal.SIGTERM)
    pending = _pending(state.endpoints.management)
    deadline = time.monotonic() + drain_s  # one drain time for the doors and the queue
    _wait(lambda: not any(_alive(forwarder) for forwarder in state.forwarders), drain_s)
    drained = _drain(state.endpoints.management, deadline - time.monotonic())
    java = _java_pid(folder)
    began = time.monotonic()
    with suppress(ProcessLookupError):
        os.kill(java, signal.SIGTERM) if java else os.killpg(state.group, signal.SIGTERM)
    exited = _wait(lambda: not _alive(java) if java else not _members(state.group), exit_s)
    java_exit_s = time.monotonic() - began
    for group in (state.group, *state.forwarders):
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    if not _wait(lambda: not any(_members(g) for g in (state.group, *state.forwarders)), 20):
        raise ServerError(f"processes of the server in {folder.root} survived SIGKILL")
    shutil.rmtree(folder.tmp, ignore_errors=True)
    folder.state.unlink(missing_ok=True)
    return StopReport(drained, pending, java_exit_s, killed=not exited)


def _pending(management: str) -> int:
    """Requests queued now; 0 when the management door does not answer."""
    try:
        return pending_requests(management)
    except (OSError, http.client.HTTPException, ValueError):
        return 0


def _drain(management: str, timeout_s: float) -> bool:
    """Wait until no request is queued (and the batch a worker holds had time to finish)."""
    if timeout_s <= 0:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if pending_requests(management) == 0:
                time.sleep(0.5)  # the batch already in a worker is not counted as pending
                if pending_requests(management) == 0:
                    return True
        except (OSError, http.client.HTTPException, ValueError):
            return True  # no management door: nothing can be asked, nothing to drain
        time.sleep(0.2)
    return False


def _java_pid(folder: ServerFolder) -> int | None:
    with suppress(OSError, ValueError):
        return int((folder.tmp / ".model_server.pid").read_text().strip())
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with suppress(OSError):  # a zombie has exited: only its parent has not read its status yet
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


def _members(group: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().split(")")[-1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _wait(done: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return done()


def config_with_free_ports(config_text: str) -> str:
    """The config with its inference, management and metrics addresses and its gRPC ports on
    free loopback ports (management and gRPC matter only for servers that are not isolated)."""
    for door in ("inference", "management", "metrics"):
        config_text = re.sub(rf"(?m)^\s*{door}_address\s*=.*$", "", config_text)
        config_text += f"\n{door}_address=http://127.0.0.1:{free_port()}"
    for door in ("grpc_inference_port", "grpc_management_port"):
        config_text = re.sub(rf"(?m)^\s*{door}\s*=.*$", "", config_text)
        config_text += f"\n{door}={free_port()}"
    if re.search(r"(?m)^\s*oip_grpc_address\s*=", config_text):
        config_text = re.sub(r"(?m)^\s*oip_grpc_address\s*=.*$", "", config_text)
        config_text += f"\noip_grpc_address=127.0.0.1:{free_port()}"
    return config_text + "\n"


@contextmanager
def private_server(
    model_store: Path,
    models: list[str],
    *,
    workdir: Path,
    config_text: str | None = None,
    worker_environment: Mapping[str, str] = WORKER_ENVIRONMENT,
    isolated: bool = True,
    isolation: str = "namespace",
    timeout_s: float = 300,
) -> Iterator[RunningServer]:
    """A TorchServe of its own (folder, namespace, free ports) serving ``models`` (archive
    names in ``model_store``), as ``make serve`` runs one; always stopped."""
    config_text = config_with_free_ports(
        config_text or (REPO_ROOT / "config.properties").read_text()
    )
    folder = ServerFolder(workdir / "run")
    server = start_server(
        model_store,
        [f"{m}={m}.mar" for m in models],
        folder,
        config_text,
        worker_environment=worker_environment,
        isolated=isolated,
        isolation=isolation,
    )
    try:
        wait_until_ready(
            server.endpoints.management,
            models,
            timeout_s=timeout_s,
            log_file=server.log_file,
            process=server.process,
        )
        yield server
    finally:
        stop_server(server.state, drain_s=10, exit_s=30)
        server.process.wait(10)
