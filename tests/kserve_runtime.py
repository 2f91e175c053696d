"""TorchServe started the way KServe's TorchServe runtime starts it, on this machine.

KServe's runtime (config/runtimes/kserve-torchserve.yaml) runs, in a container whose storage is
mounted at /mnt/models::

    torchserve --start --model-store=/mnt/models/model-store \\
               --ts-config=/mnt/models/config/config.properties

with TS_SERVICE_ENVELOPE (kserve for v1, kservev2 for v2 and grpc-v2) and PROTOCOL_VERSION
set, plus the InferenceService's env. Here the storage folder is a temporary one instead of
/mnt/models (the command line names it the same way), its ports are free ones, and the server
gets its own TMPDIR, TEMP and working directory; with ``cpus`` it runs inside a cgroup whose CPU
quota is that many CPUs, as a pod's CPU limit does.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml

from resnet_mar.kserve_storage import PROTOCOLS, Ports
from resnet_mar.torchserve import (
    Endpoints,
    ServerState,
    stop_server,
    torchserve_executable,
    wait_until_ready,
)

CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


@contextmanager
def cpu_quota(cpus: float) -> Iterator[Path]:
    """A cgroup with a CPU quota of ``cpus``: its ``cgroup.procs`` file (a process written there
    and its children run under the quota). cgroup v1's cpu controller, or v2's cpu.max."""
    name = f"resnet_mar_{uuid.uuid4().hex[:8]}"
    if (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists():
        group = CGROUP_V1_CPU / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
    elif "cpu" in (CGROUP_V2 / "cgroup.subtree_control").read_text().split():
        group = CGROUP_V2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
    else:
        raise AssertionError(
            "cannot create a cgroup with a CPU quota here (needs root and a writable cpu "
            "controller, cgroup v1 or v2): the pod-like CPU limit cannot be tested"
        )
    try:
        yield group / "cgroup.procs"
    finally:
        with suppress(OSError):
            group.rmdir()


@contextmanager
def kserve_torchserve(
    storage: Path,
    protocol: str,
    workdir: Path,
    ports: Ports,
    *,
    models: list[str],
    cgroup_procs: Path | None = None,
) -> Iterator[ServerState]:
    """TorchServe serving ``storage`` as KServe's runtime starts it for ``protocol``; READY on
    entry, always stopped."""
    service = yaml.safe_load((storage / "inferenceservice.yaml").read_text())
    pod_env = {e["name"]: e["value"] for e in service["spec"]["predictor"]["model"]["env"]}
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **pod_env,
        "TS_SERVICE_ENVELOPE": PROTOCOLS[protocol],
        "PROTOCOL_VERSION": protocol,
        "TMPDIR": str(workdir / "tmp"),
        "TEMP": str(workdir / "tmp"),
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    command = [
        torchserve_executable(),
        "--start",
        f"--model-store={storage / 'model-store'}",
        f"--ts-config={storage / 'config' / 'config.properties'}",
    ]

    def join_cgroup() -> None:  # in the child, before torchserve starts: Java and workers follow
        if cgroup_procs is not None:
            cgroup_procs.write_text(str(os.getpid()))

    with open(workdir / "torchserve.out", "wb") as output:
        launcher = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=join_cgroup,
        )  # fmt: skip
    state = ServerState(
        folder=str(workdir),
        endpoints=Endpoints(
            inference=f"http://127.0.0.1:{ports.inference}",
            metrics=f"http://127.0.0.1:{ports.metrics}",
            management=f"http://127.0.0.1:{ports.management}",
        ),
        group=launcher.pid,
    )
    try:
        launcher.wait(120)  # `torchserve --start` returns once Java runs
        wait_until_ready(
            state.endpoints.management,
            models,
            timeout_s=300,
            log_file=workdir / "logs" / "ts_log.log",
        )
        yield state
    finally:
        stop_server(state, drain_s=5, exit_s=30)
