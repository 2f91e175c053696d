"""The container image's entry point (``Dockerfile``): TorchServe with this toolkit's doors, in
the foreground under tini, stopped on SIGTERM the way ``make stop`` stops a server.

The archives come from KServe's storage layout when one is mounted at ``/mnt/models``
(``model-store/*.mar``, and ``config/config.properties`` when there is one), else from the image
(``make image`` after ``make archive`` bakes ``model_store/`` in). The public doors listen on every
address of the container, which is a network namespace of its own: HTTP inference (8080, the front
door: every protocol, and the Open Inference health and metadata), the Open Inference gRPC
service (8081) and metrics (8082), at the ports config.properties gives them. Management is a unix
socket inside; TorchServe's own gRPC doors stay on the container's loopback.

Imports only what serving needs (no torch, no build side): the image holds no handler module
outside the archives.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path

from resnet_mar.server_doors import ServerFolder
from resnet_mar.torchserve import ServerError, start_server, stop_server, wait_until_ready

#: KServe's storage layout, where its storage initializer puts a model's files.
MOUNT = Path("/mnt/models")
#: What the image itself holds (Dockerfile).
BAKED = Path("/opt/resnet-mar")
#: A stop answers what was accepted within these (docker stop -t 60; a pod's grace period).
DRAIN_S, EXIT_S = 20.0, 20.0


def layout(mount: Path = MOUNT, baked: Path = BAKED) -> tuple[Path, str]:
    """The model store to serve and the TorchServe settings to serve it with."""
    for store, config in (
        (mount / "model-store", mount / "config" / "config.properties"),
        (baked / "model-store", baked / "config.properties"),
    ):
        if any(store.glob("*.mar")):
            chosen = config if config.is_file() else baked / "config.properties"
            return store, chosen.read_text()
    raise ServerError(
        f"no archive to serve: mount a KServe storage folder at {mount} (model-store/*.mar, "
        f"config/config.properties) or build the image after make archive ({baked}/model-store)"
    )


def main() -> int:
    try:
        store, config_text = layout()
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    folder = ServerFolder(Path(tempfile.gettempdir()) / "resnet-mar")
    names = sorted(mar.stem for mar in store.glob("*.mar"))
    server = start_server(store, ["all"], folder, config_text, isolation="none",
                          public_host="0.0.0.0")  # fmt: skip
    endpoints = server.endpoints
    print(
        f"serving {names} from {store}: HTTP {endpoints.inference}, gRPC {endpoints.grpc or '-'},"
        f" metrics {endpoints.metrics}; management {endpoints.management} (inside only)",
        flush=True,
    )
    try:
        wait_until_ready(endpoints.management, names, timeout_s=600, log_file=server.log_file,
                         process=server.process)  # fmt: skip
        for line in (folder.logs / "model_log.log").read_text(errors="replace").splitlines():
            if "threads=" in line:  # each worker's model, format, classes and threads
                print(line.split(" - ", 1)[-1], flush=True)
        print(f"READY: {names}", flush=True)
        while not stopping.wait(1.0):
            if server.process.poll() is not None:
                raise ServerError(f"TorchServe exited with {server.process.returncode}")
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        stop_server(server.state, drain_s=0, exit_s=10)
        return 1
    print(f"stop: {stop_server(server.state, drain_s=DRAIN_S, exit_s=EXIT_S)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
