"""``make kserve``: the storage folder KServe's TorchServe runtime serves, and its
InferenceService.

KServe mounts the folder at ``/mnt/models`` and runs ``torchserve --start
--model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`` with
``TS_SERVICE_ENVELOPE`` (kserve for v1, kservev2 for v2 and grpc-v2) and ``PROTOCOL_VERSION``;
KServe's model server in the same container listens on 8080 (HTTP) and 8081 (gRPC) and forwards
to TorchServe on the addresses below. Written here:

    kserve/config/config.properties   TorchServe's settings, with every model in model_snapshot
    kserve/model-store/<name>.mar     the archives ``make archive`` builds, unchanged
    kserve/inferenceservice.yaml      a serving.kserve.io/v1beta1 InferenceService

Choices (README "Run on KServe" says why in full): ``enable_envvars_config`` stays off, so the
envelope KServe asks for is not applied (its envelopes break batching; the handler speaks v1 and
v2 itself, and bypasses an envelope a config does enable); token authorization is off (KServe's
model server cannot send keys); management and gRPC listen on the pod's loopback only (KServe's
model server reaches them from the same container); inference listens on the pod network so
that the kubelet can probe ``/ping``, which turns Unhealthy when a model's worker cannot load.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import yaml
from serving_schema import ModelConfig

from resnet_mar.worker_environment import WORKER_ENVIRONMENT

MOUNT = "/mnt/models"
PROTOCOLS = {"v1": "kserve", "v2": "kservev2", "grpc-v2": "kservev2"}
#: The TorchServe the archives were built and tested with (pyproject.toml pins it); KServe's
#: own default runtime image is 0.9.0.
TORCHSERVE_VERSION = version("torchserve")
STORAGE_SCHEMES = ("pvc://", "s3://", "gs://", "https://", "http://", "hdfs://", "webhdfs://")


class KServeError(ValueError):
    """A request for a storage folder that cannot work; says what to change."""


@dataclass(frozen=True)
class Ports:
    """TorchServe's ports inside the pod (KServe's model server owns 8080 and 8081), and the
    address inference and metrics listen on (the pod's network; loopback in tests)."""

    listen: str = "0.0.0.0"
    inference: int = 8085
    management: int = 8086
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


@dataclass(frozen=True)
class Deployment:
    """What the InferenceService asks of the cluster."""

    name: str
    protocol: str
    storage_uri: str
    cpus: str
    memory: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            valid = ", ".join(PROTOCOLS)
            raise KServeError(f"PROTOCOL must be one of {valid}, not {self.protocol!r}")
        if not self.storage_uri.startswith(STORAGE_SCHEMES):
            raise KServeError(
                f"STORAGE_URI {self.storage_uri!r} is not a storage KServe reads: use e.g. "
                "pvc://<claim>/<folder> or s3://<bucket>/<folder>"
            )


def archive_settings(mar: Path) -> tuple[str, ModelConfig]:
    """An archive's version (from its manifest) and serving settings (its model-config.yaml)."""
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(archive.read("model-config.yaml"))
    return str(manifest["model"]["modelVersion"]), ModelConfig.from_dict(config)


def model_snapshot(archives: list[Path]) -> dict:
    """TorchServe's ``model_snapshot``: the models it loads at start, each with the settings
    its own archive carries (a snapshot's values win over the archive's, so they are copied
    from it, never restated)."""
    models = {}
    for mar in archives:
        version, config = archive_settings(mar)
        models[mar.stem] = {
            version: {
                "defaultVersion": True,
                "marName": mar.name,
                "minWorkers": config.min_workers,
                "maxWorkers": config.max_workers,
                "batchSize": config.batch_size,
                "maxBatchDelay": config.max_batch_delay_ms,
                "responseTimeout": config.response_timeout_s,
            }
        }
    return {"name": "startup.cfg", "modelCount": len(models), "models": models}


def config_properties(snapshot: dict, ports: Ports = Ports(), mount: str = MOUNT) -> str:
    lines = [
        "# TorchServe in KServe's TorchServe runtime (make kserve; resnet_mar/kserve_storage.py).",
        "# Inference on the pod network (the kubelet probes /ping there); management and gRPC on",
        "# the pod's loopback, where KServe's model server in the same container reaches them.",
        f"inference_address=http://{ports.listen}:{ports.inference}",
        f"management_address=http://127.0.0.1:{ports.management}",
        f"metrics_address=http://{ports.listen}:{ports.metrics}",
        "grpc_inference_address=127.0.0.1",
        f"grpc_inference_port={ports.grpc_inference}",
        "grpc_management_address=127.0.0.1",
        f"grpc_management_port={ports.grpc_management}",
        "# KServe's model server cannot send TorchServe's keys.",
        "disable_token_authorization=true",
        "# Off: TS_SERVICE_ENVELOPE (set by KServe) is then not applied. Its envelopes answer only",
        "# the first request of a batch; the handler speaks v1 and v2 itself, batching intact.",
        "enable_envvars_config=false",
        "enable_model_api=false",
        "allowed_urls=^$",
        "install_py_dep_per_model=false",
        "max_request_size=8388608",
        "default_workers_per_model=1",
        "metrics_mode=prometheus",
        "model_metrics_auto_detect=true",
        "disable_system_metrics=true",
        f"model_store={mount}/model-store",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
    ]
    return "\n".join(lines) + "\n"


def inference_service(deployment: Deployment, ports: Ports = Ports()) -> dict:
    """The InferenceService: TorchServe's runtime at this project's version, the workers'
    environment, the pod's CPU and memory (threads follow the CPU limit, see
    handlers/cpu_budget.py), and a readiness probe on TorchServe's /ping."""
    model: dict = {
        "modelFormat": {"name": "pytorch"},
        "protocolVersion": deployment.protocol,
        "runtimeVersion": TORCHSERVE_VERSION,
        "storageUri": deployment.storage_uri,
        "env": [{"name": name, "value": value} for name, value in WORKER_ENVIRONMENT.items()],
        "resources": {
            "requests": {"cpu": deployment.cpus, "memory": deployment.memory},
            "limits": {"cpu": deployment.cpus, "memory": deployment.memory},
        },
        "readinessProbe": {
            "httpGet": {"path": "/ping", "port": ports.inference},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }
    if deployment.protocol == "grpc-v2":
        model["ports"] = [{"containerPort": 8081, "name": "h2c", "protocol": "TCP"}]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": deployment.name},
        "spec": {"predictor": {"model": model}},
    }


def write_storage(
    archives: list[Path], out: Path, deployment: Deployment, ports: Ports = Ports()
) -> list[Path]:
    """Lay out ``out`` (replacing what an earlier run wrote there); the files written."""
    missing = [str(mar) for mar in archives if not mar.is_file()]
    if missing:
        raise KServeError(f"no archive {', '.join(missing)}: run make archive first")
    store = out / "model-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    copied = [Path(shutil.copy2(mar, store / mar.name)) for mar in archives]
    config = out / "config" / "config.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_properties(model_snapshot(copied), ports))
    service = out / "inferenceservice.yaml"
    service.write_text(yaml.safe_dump(inference_service(deployment, ports), sort_keys=False))
    return [config, *copied, service]
