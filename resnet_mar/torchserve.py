"""Start, watch and stop TorchServe: one place for what tests, ``make serve`` and the benchmark do.

TorchServe keeps one pid file per ``TMPDIR`` and writes logs into its working directory, so a
private server gets its own TMPDIR, working directory, log folder and free loopback ports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

from resnet_mar.worker_environment import WORKER_ENVIRONMENT

REPO_ROOT = Path(__file__).resolve().parent.parent
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


class ServerError(RuntimeError):
    """TorchServe could not be started or did not get its models ready; says why."""


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str

    @classmethod
    def from_config(cls, config_text: str) -> Endpoints:
        found = dict(re.findall(r"^\s*(\w+_address)\s*=\s*(\S+)", config_text, re.MULTILINE))
        return cls(*(found[key] for key in ADDRESS_KEYS))


def torchserve_executable() -> str:
    """The ``torchserve`` next to this interpreter (the project venv), else on PATH."""
    local = Path(sys.executable).with_name("torchserve")
    found = str(local) if local.exists() else shutil.which("torchserve")
    if not found:
        raise ServerError("torchserve is not installed: run 'make setup'")
    if not shutil.which("java"):
        raise ServerError("java is not on PATH: TorchServe needs Java >= 17 ('make setup')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_with_free_ports(config_text: str) -> str:
    """The project's config.properties with every address moved to a free loopback port."""
    for key in ADDRESS_KEYS:
        config_text = re.sub(
            rf"^(\s*{key}\s*=\s*)\S+",
            lambda m: f"{m.group(1)}http://127.0.0.1:{free_port()}",
            config_text,
            flags=re.MULTILINE,
        )
    return config_text


def model_status(management: str) -> dict[str, list[str]]:
    """Worker statuses per registered model, from the management API."""
    listed = requests.get(f"{management}/models", timeout=5).json().get("models", [])
    statuses = {}
    for entry in listed:
        described = requests.get(f"{management}/models/{entry['modelName']}", timeout=5).json()
        statuses[entry["modelName"]] = [
            worker["status"] for model in described for worker in model.get("workers", [])
        ]
    return statuses


def wait_until_ready(
    management: str,
    expected: list[str],
    *,
    timeout_s: float,
    log_file: Path | None = None,
    process: subprocess.Popen | None = None,
) -> dict[str, list[str]]:
    """Block until every expected model has all its workers READY; fail with the log's tail."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"TorchServe exited with {process.returncode}{log_tail(log_file)}")
        try:
            statuses = model_status(management)
        except requests.RequestException:
            statuses = {}
        if all(statuses.get(m) and set(statuses[m]) == {"READY"} for m in expected):
            return statuses
        failed = load_failures(log_file, expected)
        if failed:  # TorchServe retries for ever; the first failure already says why
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


@dataclass
class RunningServer:
    endpoints: Endpoints
    workdir: Path
    process: subprocess.Popen

    @property
    def log_file(self) -> Path:
        return self.workdir / "logs" / "ts_log.log"


@contextmanager
def private_server(
    model_store: Path,
    models: list[str],
    *,
    workdir: Path,
    config_text: str | None = None,
    worker_environment: Mapping[str, str] = WORKER_ENVIRONMENT,
    timeout_s: float = 300,
) -> Iterator[RunningServer]:
    """A TorchServe of its own (TMPDIR, ports, logs) serving ``models``; always stopped.
    Its workers get ``worker_environment``, as ``make serve`` gives them."""
    config_text = config_text or (REPO_ROOT / "config.properties").read_text()
    config_text = config_with_free_ports(config_text)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    config_file = workdir / "config.properties"
    config_file.write_text(config_text)
    env = {
        **os.environ,
        **worker_environment,
        "TMPDIR": str(workdir / "tmp"),
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    command = [
        torchserve_executable(),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store),
        "--models",
        *[f"{m}={m}.mar" for m in models],
        "--ts-config",
        str(config_file),
    ]
    output = open(workdir / "torchserve.out", "wb")  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = RunningServer(Endpoints.from_config(config_text), workdir, process)
    try:
        wait_until_ready(
            server.endpoints.management,
            models,
            timeout_s=timeout_s,
            log_file=server.log_file,
            process=process,
        )
        yield server
    finally:
        _stop(process)
        output.close()


def _stop(process: subprocess.Popen, grace_s: float = 20) -> None:
    """TERM the whole process group (frontend and Python workers), then KILL stragglers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
