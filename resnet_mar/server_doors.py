"""Where a TorchServe started by this toolkit can be reached, and by whom.

TorchServe 0.12 opens five doors: HTTP inference, management and metrics, and gRPC inference
and management, which no setting closes. Its management API scales a model's workers (or to 0)
even with ``enable_model_api=false``, over HTTP and over gRPC, without any credential. So a
server of this toolkit runs in its own network namespace, where nothing on this host can reach
a TCP port it opens, and only these doors lead in:

* inference and metrics: TorchServe listens on unix sockets in its server folder; a forwarder
  (``socat``) listens on the public loopback addresses of config.properties and relays each
  connection to them, so ``curl -T photo.jpg http://127.0.0.1:8080/predictions/resnet50`` works
  as before (its cost: docs/benchmark/settings.md);
* management: a unix socket in the server folder, which only its owner may enter (mode 0700):
  ``curl --unix-socket run/management.sock http://localhost/models``;
* gRPC (inference and management): left inside the namespace, where nothing reaches them.

The worker sockets and extracted archives go to the server folder too (TorchServe puts them in
``TEMP``, by default the shared /tmp), and so does ``key_file.json`` when token authorization is
on (it is written to TorchServe's working directory).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What the front door prints once every port of it listens (its starter waits for it).
LISTENING = "front door: listening"

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Forwarded from the host's loopback to the server's unix sockets.
PUBLIC_DOORS = ("inference", "metrics")


class DoorError(RuntimeError):
    """This machine cannot give TorchServe its own doors; says what to install or run."""


@dataclass(frozen=True)
class ServerFolder:
    """A server's private folder: its sockets, temporary files, logs and state (0700)."""

    root: Path

    def socket(self, door: str) -> Path:
        return self.root / f"{door}.sock"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "config.properties"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.tmp.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        # AF_UNIX paths are limited to 107 bytes; TorchServe adds ".ts.sock.<port>" in tmp.
        longest = str(self.tmp / ".ts.sock.65535")
        if len(longest) > 100:
            raise DoorError(f"server folder path too long for unix sockets: {self.root}")


def config_addresses(config_text: str) -> dict[str, str]:
    """Every ``<door>_address`` config.properties sets, by door."""
    return dict(re.findall(r"^\s*(\w+)_address\s*=\s*(\S+)", config_text, re.MULTILINE))


def public_addresses(config_text: str, host: str | None = None) -> dict[str, str]:
    """The loopback addresses config.properties gives the public doors; with ``host``, their
    ports on that host instead (a container's 0.0.0.0: its own network namespace)."""
    found = config_addresses(config_text)
    missing = [door for door in PUBLIC_DOORS if door not in found]
    if missing:
        raise DoorError(f"config.properties lacks {', '.join(f'{d}_address' for d in missing)}")
    if host is not None:
        return {door: f"http://{host}:{host_and_port(found[door])[1]}" for door in PUBLIC_DOORS}
    for door in PUBLIC_DOORS:
        host, _ = host_and_port(found[door])
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise DoorError(
                f"{door}_address={found[door]}: only loopback addresses are served; put an "
                "authenticating reverse proxy in front to reach other hosts"
            )
    return {door: found[door] for door in PUBLIC_DOORS}


def host_and_port(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"https?://\[?([^\]/]+?)\]?:(\d+)/?", address)
    if not match:
        raise DoorError(f"address {address!r} is not http://host:port")
    return match.group(1), int(match.group(2))


def isolated_config(config_text: str, folder: ServerFolder) -> str:
    """config.properties as TorchServe sees it inside its namespace: every HTTP door on a unix
    socket in the server folder."""
    kept = [
        line
        for line in config_text.splitlines()
        if not re.match(r"\s*(inference|management|metrics)_address\s*=", line)
    ]
    doors = [f"{door}_address=unix:{folder.socket(door)}" for door in (*PUBLIC_DOORS, "management")]
    return "\n".join([*kept, "# Doors (resnet_mar/server_doors.py):", *doors]) + "\n"


_LOOPBACK_UP = 'ip link set lo up && exec "$0" "$@"'
#: ``ISOLATION``: a network namespace where the kernel allows one (auto), always (namespace,
#: refusing to start without one), or never (none).
ISOLATION_MODES = ("auto", "namespace", "none")


def namespace_flags() -> list[str]:
    """``unshare`` flags for a network namespace: as root a plain one; otherwise inside a user
    namespace, where the kernel allows that."""
    return ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]


def namespace_refusal(proc: Path = Path("/proc")) -> str | None:
    """Why this process cannot create a network namespace, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has no network namespaces (they are a Linux feature)"
    for tool in ("unshare", "ip"):
        if not shutil.which(tool):
            return f"{tool} is missing (apt-get install util-linux iproute2)"
    probe = subprocess.run(["unshare", *namespace_flags(), "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return f"{namespace_cause(proc, os.geteuid())} (unshare: {probe.stderr.strip()[-120:]})"


def namespace_cause(proc: Path, euid: int) -> str:
    """The likeliest reason ``unshare`` was refused, and what would allow it, from the kernel's
    own settings and this process's restrictions."""

    def read(name: str) -> str:
        try:
            return (proc / name).read_text().strip()
        except OSError:
            return ""

    status = dict(
        line.split(":\t", 1) for line in read("self/status").splitlines() if ":\t" in line
    )
    if status.get("Seccomp", "0").strip() == "2":
        return (
            "a seccomp filter forbids it (a container's default profile: Docker and Kubernetes' "
            "RuntimeDefault allow unshare only with CAP_SYS_ADMIN); the container itself "
            "isolates the network: publish only the inference and metrics ports"
        )
    if euid != 0 and read("sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10 and later): run "
            "make serve as root, or allow user namespaces for unshare with an AppArmor profile"
        )
    if euid != 0 and read("sys/user/max_user_namespaces") == "0":
        return "user namespaces are off (sysctl user.max_user_namespaces=0): run make serve as root"
    if euid != 0 and read("sys/kernel/unprivileged_userns_clone") == "0":
        return (
            "unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=0): "
            "run make serve as root"
        )
    effective = int(status.get("CapEff", "0").strip() or "0", 16)
    if euid == 0 and not effective & (1 << 21):  # CAP_SYS_ADMIN
        return "this root lacks CAP_SYS_ADMIN (an unprivileged container)"
    return "the kernel refused it"


def isolation_prefix(mode: str) -> tuple[list[str], str | None]:
    """The command prefix that runs TorchServe in a network namespace of its own, loopback up
    (gRPC binds 127.0.0.1 there), and why there is none: ``mode`` auto serves without one when
    the kernel refuses it, namespace refuses to start, none never tries."""
    if mode not in ISOLATION_MODES:
        raise DoorError(f"ISOLATION must be one of {', '.join(ISOLATION_MODES)}, not {mode!r}")
    if mode == "none":
        return [], "ISOLATION=none"
    refusal = namespace_refusal()
    if refusal is None:
        return [
            "unshare",
            *namespace_flags(),
            "sh",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
        ], None
    if mode == "namespace":
        raise DoorError(
            f"cannot create a network namespace: {refusal}. ISOLATION=auto serves without one"
        )
    return [], refusal


def grpc_doors(config_text: str) -> dict[str, str]:
    """The gRPC doors TorchServe opens on TCP whatever its settings (no unix socket for gRPC):
    inference and management, at their configured address and port or TorchServe's defaults."""
    settings = dict(re.findall(r"^\s*(grpc_\w+)\s*=\s*(\S+)", config_text, re.MULTILINE))
    return {
        door: f"{settings.get(f'grpc_{door}_address', '127.0.0.1')}:"
        f"{settings.get(f'grpc_{door}_port', default)}"
        for door, default in (("inference", "7070"), ("management", "7071"))
    }


def without_namespace(config_text: str, why: str) -> str:
    """The one line ``make serve`` prints when it serves without a namespace: why, which doors
    then stay reachable to other local users, and how to close them."""
    grpc = grpc_doors(config_text)
    return (
        f"warning: serving without a network namespace ({why}). Other local users can reach "
        f"TorchServe's gRPC doors: inference on {grpc['inference']} and management on "
        f"{grpc['management']}, which scales workers without any credential; the HTTP doors "
        "are as usual (inference and metrics forwarded on loopback, management an owner-only "
        "socket). On a shared machine serve as root or where user namespaces are allowed "
        "(ISOLATION=namespace refuses to start without one); in a container, publish only "
        "the inference and metrics ports."
    )


def forwarder_command(address: str, target: Path) -> list[str]:
    """A byte relay from a public loopback address to a door's unix socket, one process a
    connection (socat's fork): the metrics door."""
    if not shutil.which("socat"):
        raise DoorError("socat is missing: apt-get install socat ('make setup' does, as root)")
    host, port = host_and_port(address)
    return [
        "socat",
        f"TCP-LISTEN:{port},bind={host},reuseaddr,fork,backlog=1024",
        f"UNIX-CONNECT:{target}",
    ]


def grpc_public_address(config_text: str, public_host: str | None = None) -> str | None:
    """``oip_grpc_address`` (host:port, loopback; with ``public_host``, its port there): where
    the front door serves the Open Inference Protocol's gRPC service; None when config.properties
    sets none. TorchServe ignores the key (its own gRPC doors stay in its namespace)."""
    found = re.search(r"(?m)^\s*oip_grpc_address\s*=\s*(\S+)", config_text)
    if found is None:
        return None
    host, port = host_and_port(f"http://{found.group(1)}")
    if public_host is not None:
        return f"{public_host}:{port}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise DoorError(f"oip_grpc_address={found.group(1)}: only loopback addresses are served")
    return f"{host}:{port}"


def front_door_command(
    address: str, folder: ServerFolder, model_store: Path, grpc: str | None = None
) -> list[str]:
    """The inference door (front_door.py): an HTTP relay to the inference socket that answers
    the Open Inference Protocol's health and metadata itself, and its gRPC service on ``grpc``."""
    host, port = host_and_port(address)
    return [
        sys.executable,
        "-m",
        "resnet_mar.front_door",
        "--listen",
        f"{host}:{port}",
        "--inference",
        str(folder.socket("inference")),
        "--management",
        str(folder.socket("management")),
        "--model-store",
        str(model_store.resolve()),
        *(["--grpc", grpc] if grpc else []),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the management door of an isolated server."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def http_exchange(
    connection: http.client.HTTPConnection, method: str, target: str
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection, then closed: status and decoded JSON (the text
    when the body is not JSON)."""
    try:
        connection.request(method, target)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body or b"null")
    except ValueError:
        return response.status, body.decode("utf-8", errors="replace")
