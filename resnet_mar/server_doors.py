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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def public_addresses(config_text: str) -> dict[str, str]:
    """The loopback addresses config.properties gives the public doors."""
    found = config_addresses(config_text)
    missing = [door for door in PUBLIC_DOORS if door not in found]
    if missing:
        raise DoorError(f"config.properties lacks {', '.join(f'{d}_address' for d in missing)}")
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


def isolation_prefix() -> list[str]:
    """The command that runs TorchServe in a network namespace of its own, loopback up (gRPC
    binds 127.0.0.1 there). As root a plain network namespace; otherwise a user namespace too,
    where the kernel allows it."""
    for tool in ("unshare", "ip"):
        if not shutil.which(tool):
            raise DoorError(f"{tool} is missing: apt-get install util-linux iproute2")
    flags = ["--net"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--net"]
    probe = subprocess.run(["unshare", *flags, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise DoorError(
            f"cannot create a network namespace ({probe.stderr.strip()}): run as root or "
            "enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )
    return ["unshare", *flags, "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def forwarder_command(address: str, target: Path) -> list[str]:
    """A relay from a public loopback address to a door's unix socket, one process a
    connection (socat's fork), so a slow client holds only its own."""
    if not shutil.which("socat"):
        raise DoorError("socat is missing: apt-get install socat ('make setup' does, as root)")
    host, port = host_and_port(address)
    return [
        "socat",
        f"TCP-LISTEN:{port},bind={host},reuseaddr,fork,backlog=1024",
        f"UNIX-CONNECT:{target}",
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
