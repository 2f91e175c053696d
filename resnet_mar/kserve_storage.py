"""``make kserve``: a KServe storage folder and the YAML that serves it, with this toolkit's own
runtime (the container image, ``RUNTIME=own``, the default) or KServe's TorchServe runtime
(``RUNTIME=kserve-torchserve``).

KServe's storage initializer puts the folder at ``/mnt/models``. Written here (``build/kserve``):

    config/config.properties   own: this toolkit's settings (its public ports);
                               kserve-torchserve: TorchServe's, every model in model_snapshot
    model-store/<name>.mar     the archives ``make archive`` builds, unchanged
    servingruntime.yaml        own: a serving.kserve.io/v1alpha1 ServingRuntime whose container is
                               the image (make image), started as KServe starts a runtime
    inferenceservice.yaml      a serving.kserve.io/v1beta1 InferenceService selecting the runtime

The own runtime answers v1, v2 (REST) and grpc-v2 on the pod's ports itself, without KServe's
Python model server in front: errors keep their 4xx and every header passes (resnet_mar/
container.py). KServe's TorchServe runtime (``pytorch/torchserve-kfs``, 0.12.0 asked; KServe's
default is 0.9.0) runs ``torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties`` behind KServe's model server (8080 HTTP, 8081
gRPC), with ``TS_SERVICE_ENVELOPE`` set; its image has no onnxruntime, openvino or nncf, so only
TorchScript and AOTInductor archives are written for it. Its config leaves
``enable_envvars_config`` off, so the envelope is not applied (its envelopes break batching; the
handler speaks v1 and v2 itself, and bypasses an envelope a config does enable); token
authorization is off (KServe's model server cannot send keys); management and gRPC listen on the
pod's loopback; inference listens on the pod network so that the kubelet can probe ``/ping``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import yaml

from resnet_mar.server_doors import config_addresses, grpc_public_address, host_and_port
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from resnet_serving.serving_schema import ModelConfig

MOUNT = "/mnt/models"
PROTOCOLS = {"v1": "kserve", "v2": "kservev2", "grpc-v2": "kservev2"}
#: The TorchServe the archives were built and tested with (pyproject.toml pins it); KServe's
#: own default runtime image is 0.9.0.
TORCHSERVE_VERSION = version("torchserve")
#: ``RUNTIME``: this toolkit's image, or KServe's TorchServe runtime.
RUNTIMES = ("own", "kserve-torchserve")
#: Formats KServe's TorchServe image can load (it has torch, not onnxruntime or openvino).
KSERVE_TORCHSERVE_FORMATS = ("torchscript", "aoti")
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
    runtime: str = "own"
    #: The own runtime's container image (make image; pushed where the cluster pulls from).
    image: str = "resnet-mar:latest"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise KServeError(f"RUNTIME must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
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
    handlers/resnet_serving/cpu_budget.py), and a readiness probe on TorchServe's /ping."""
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


def own_runtime(deployment: Deployment, config_text: str) -> dict:
    """The ServingRuntime of this toolkit's image: its entry point serves /mnt/models as KServe
    lays it out, on the ports config.properties gives (read from the storage's copy of it)."""
    http = host_and_port(config_addresses(config_text)["inference"])[1]
    metrics = host_and_port(config_addresses(config_text)["metrics"])[1]
    grpc = grpc_public_address(config_text)
    ports = [{"containerPort": http, "name": "http1", "protocol": "TCP"}]
    if deployment.protocol == "grpc-v2" and grpc:
        ports = [{"containerPort": int(grpc.rsplit(":", 1)[1]), "name": "h2c", "protocol": "TCP"}]
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": runtime_name(deployment)},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(metrics),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [{"name": "pytorch", "version": "1", "autoSelect": False}],
            "protocolVersions": ["v1", "v2", "grpc-v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": deployment.image,
                    "args": [],
                    "env": [{"name": k, "value": v} for k, v in WORKER_ENVIRONMENT.items()],
                    "ports": ports,
                    "resources": {
                        "requests": {"cpu": deployment.cpus, "memory": deployment.memory},
                        "limits": {"cpu": deployment.cpus, "memory": deployment.memory},
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/v2/health/ready", "port": http},
                        "periodSeconds": 10,
                        "failureThreshold": 3,
                    },
                }
            ],
        },
    }


def runtime_name(deployment: Deployment) -> str:
    return f"{deployment.name}-runtime"


def own_inference_service(deployment: Deployment) -> dict:
    """The InferenceService that selects the own runtime (resources and probes are the
    runtime's)."""
    model = {
        "modelFormat": {"name": "pytorch"},
        "runtime": runtime_name(deployment),
        "protocolVersion": deployment.protocol,
        "storageUri": deployment.storage_uri,
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": deployment.name},
        "spec": {"predictor": {"model": model}},
    }


def write_storage(
    archives: list[Path],
    out: Path,
    deployment: Deployment,
    ports: Ports = Ports(),
    config_text: str = "",
) -> list[Path]:
    """Lay out ``out`` (replacing what an earlier run wrote there); the files written.
    ``config_text``: the own runtime's settings (config.properties)."""
    missing = [str(mar) for mar in archives if not mar.is_file()]
    if missing:
        raise KServeError(f"no archive {', '.join(missing)}: run make archive first")
    if deployment.runtime == "kserve-torchserve":
        refused = {
            mar.stem: fmt
            for mar in archives
            if (fmt := archive_settings(mar)[1].handler.model_format)
            not in KSERVE_TORCHSERVE_FORMATS
        }
        if refused:
            raise KServeError(
                f"KServe's TorchServe image (pytorch/torchserve-kfs) has no runtime for "
                f"{', '.join(f'{n} ({f})' for n, f in refused.items())}: it loads "
                f"{' and '.join(KSERVE_TORCHSERVE_FORMATS)} archives only. Use RUNTIME=own"
            )
    store = out / "model-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    copied = [Path(shutil.copy2(mar, store / mar.name)) for mar in archives]
    config = out / "config" / "config.properties"
    config.parent.mkdir(parents=True, exist_ok=True)
    written = [config, *copied]
    if deployment.runtime == "own":
        config.write_text(config_text)
        runtime = out / "servingruntime.yaml"
        runtime.write_text(yaml.safe_dump(own_runtime(deployment, config_text), sort_keys=False))
        service = own_inference_service(deployment)
        written.append(runtime)
    else:
        config.write_text(config_properties(model_snapshot(copied), ports))
        service = inference_service(deployment, ports)
        (out / "servingruntime.yaml").unlink(missing_ok=True)
    service_file = out / "inferenceservice.yaml"
    service_file.write_text(yaml.safe_dump(service, sort_keys=False))
    return [*written, service_file]
