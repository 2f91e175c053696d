"""Integration: the serving image (Dockerfile), built here with buildah from a Debian base made
with debootstrap (no container registry is reachable from this machine), and run with podman as
users run it: archives mounted in KServe's layout at /mnt/models (every format) or baked in,
published ports only, one CPU, stopped under load; and as KServe runs this toolkit's own
ServingRuntime, its container spec taken from the YAML ``make kserve`` writes.

The image holds no editable install of this repo and no handler module: every archive served
here proves that it carries what it needs. ``make test-container`` runs these (CI too).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
import yaml
from PIL import Image

from resnet_mar.build import BuildRequest, build_model
from resnet_mar.image_requirements import pins
from resnet_mar.kserve_storage import Deployment, write_storage
from resnet_mar.server_doors import REPO_ROOT, free_port
from resnet_serving import model_runtimes
from tests.client_venvs import run_client
from tests.flood import Flood
from tests.reference import STANDARD_IMAGENET, assert_same_answer

pytestmark = [pytest.mark.integration, pytest.mark.container]

CONF = REPO_ROOT / "tests" / "containers.conf"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}
BASE = "localhost/debian-base:bookworm"
IMAGE = "localhost/resnet-mar:test"
#: Wheels downloaded once per machine (this machine's proxy lets pip cache nothing).
WHEELHOUSE = Path.home() / ".cache" / "resnet-mar" / "wheels"
#: Only torch's CUDA-linked build is reachable here (README: Containers).
TORCH_INDEX = "https://pypi.org/simple"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
FORMATS = ("torchscript", "onnx", "openvino", "int8")
RELAXED_INT8 = {"int8_min_agreement": 0.6, "int8_max_error": 0.5}  # untrained: see test_int8.py


def run(*command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check:
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def base_image() -> str:
    """debian:bookworm-slim's stand-in: debootstrap's minbase with this machine's apt sources."""
    tools = ["buildah", "podman", "runc", "debootstrap"]
    missing = [tool for tool in tools if not shutil.which(tool)]
    assert not missing, f"{missing} missing: make container-tools installs them (as root)"
    if run("podman", "image", "exists", BASE, check=False).returncode == 0:
        return BASE
    root = Path(tempfile.mkdtemp(prefix="rootfs-"))
    try:
        run("debootstrap", "--variant=minbase", "bookworm", str(root),
            "http://deb.debian.org/debian", timeout=900)  # fmt: skip
        (root / "etc" / "apt" / "sources.list").unlink(missing_ok=True)
        for source in Path("/etc/apt/sources.list.d").glob("*.sources"):
            shutil.copy(source, root / "etc" / "apt" / "sources.list.d")
        for conf in Path("/etc/apt/apt.conf.d").glob("99*"):
            shutil.copy(conf, root / "etc" / "apt" / "apt.conf.d")
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)  # fmt: skip
        imported = subprocess.run(
            ["podman", "import", "--change", 'CMD ["bash"]', "-", BASE],
            stdin=tar.stdout, capture_output=True, text=True, timeout=600, env=ENV,
        )  # fmt: skip
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BASE


@pytest.fixture(scope="session")
def image(base_image: str) -> str:
    """``make image``, torch from PyPI (the CUDA build: the only one reachable here), pip fed
    from a wheelhouse so that a rebuild downloads nothing, through this machine's TLS proxy."""
    requirements = WHEELHOUSE.parent / "image-requirements.txt"
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    requirements.write_text("\n".join(pins(REPO_ROOT / "pyproject.toml")) + "\n")
    run(sys.executable, "-m", "pip", "download", "--quiet", "-d", str(WHEELHOUSE),
        "-r", str(requirements), timeout=1800)  # fmt: skip
    build_args = (
        f"-v {HOST_CA}:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt "
        f"-v {WHEELHOUSE}:/wheels:ro --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_NO_INDEX=1"
    )
    run("make", "-C", str(REPO_ROOT), "image", f"IMAGE={IMAGE}", f"BASE={base_image}",
        f"TORCH_INDEX={TORCH_INDEX}", f"IMAGE_BUILD_ARGS={build_args} --isolation chroot",
        "MODEL_STORE=/nonexistent", timeout=3000)  # fmt: skip
    return IMAGE


@pytest.fixture(scope="session")
def archives(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet18 archived in every format (untrained, seed 0), as make archive FORMAT=... does."""
    found = {"torchscript": model_store / "resnet18.mar"}
    for model_format in FORMATS[1:]:
        out = tmp_path_factory.mktemp(f"container_{model_format}")
        extra = RELAXED_INT8 if model_format == "int8" else {}
        build_model(BuildRequest("resnet18", weights="none", model_format=model_format, **extra),
                    out)  # fmt: skip
        store = out / "store"
        run(str(REPO_ROOT / "archive.sh"), "-b", str(out), "-s", str(store), "resnet18",
            timeout=600)  # fmt: skip
        found[model_format] = store / "resnet18.mar"
    return found


def storage(archive: Path, deployment: Deployment | None = None) -> Path:
    """A KServe storage folder (make kserve RUNTIME=own) the container's user may read."""
    folder = Path(tempfile.mkdtemp(prefix="kserve-storage-"))
    deployment = deployment or Deployment("resnet-mar", "v2", "pvc://m/k", "1", "4Gi")
    config = (REPO_ROOT / "config.properties").read_text()
    write_storage([archive], folder, deployment, config_text=config)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


class Container:
    """A running container with its inner ports published on free loopback ports."""

    def __init__(self, image: str, *options: str, ports: tuple[int, ...] = (8080, 8081, 8082)):
        self.name = f"resnet-mar-test-{os.getpid()}-{time.monotonic_ns()}"
        self.port = {inner: free_port() for inner in ports}
        published = [f"-p=127.0.0.1:{outer}:{inner}" for inner, outer in self.port.items()]
        run("podman", "run", "-d", "--name", self.name, "--no-healthcheck", *published,
            *options, image)  # fmt: skip

    def url(self, inner: int = 8080) -> str:
        return f"http://127.0.0.1:{self.port[inner]}"

    def logs(self) -> str:
        done = run("podman", "logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_ready(self, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            logs = self.logs()
            if "READY:" in logs:
                return logs
            state = run("podman", "inspect", "-f", "{{.State.Running}}", self.name).stdout
            assert state.strip() == "true", f"the container exited:\n{logs}"
            time.sleep(1)
        raise AssertionError(f"not READY after {timeout_s} s:\n{self.logs()}")

    def remove(self) -> None:
        run("podman", "rm", "-f", "-t", "5", self.name, check=False)


@pytest.fixture
def container(request) -> Iterator[list[Container]]:
    """Containers a test starts; each removed afterwards, whatever happens."""
    started: list[Container] = []
    yield started
    for one in started:
        one.remove()


def reference(archive: Path, model_format: str, photo: bytes) -> dict[str, float]:
    """The archive's model run in process by the handler's own runtime on one thread (as in
    the container), on torchvision's preprocessing; labels from the archive's map."""
    with zipfile.ZipFile(archive) as packed, tempfile.TemporaryDirectory() as folder:
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        serialized = manifest["model"]["serializedFile"]
        packed.extract(serialized, folder)
        labels = json.loads(packed.read("index_to_name.json"))
        threads = torch.get_num_threads()
        try:
            forward = model_runtimes.load_model(f"{folder}/{serialized}", model_format, 1)
            batch = STANDARD_IMAGENET(Image.open(io.BytesIO(photo)).convert("RGB")).unsqueeze(0)
            with torch.inference_mode():
                probabilities = forward(batch).softmax(dim=1)[0]
        finally:
            torch.set_num_threads(threads)
    scores, indices = probabilities.topk(5)
    answer: dict[str, float] = {}
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        name = labels[str(index)]
        answer.setdefault(name[-1] if isinstance(name, list) else name, score)
    return answer


def test_the_image_holds_no_handler_module_and_no_editable_install(image: str) -> None:
    probe = (
        "import importlib.util as u, importlib.metadata as m\n"
        "print([n for n in ('resnet_handler', 'serving_schema', 'inference_protocols')"
        " if u.find_spec(n)], [d.metadata['Name'] for d in m.distributions()"
        " if d.metadata['Name'] == 'resnet-mar'])"
    )
    done = run("podman", "run", "--rm", "--entrypoint", "python", image, "-c", probe)
    assert done.stdout.strip() == "[] []"


@pytest.mark.parametrize("model_format", FORMATS)
def test_every_format_served_from_the_mounted_layout(
    image, archives, photo_bytes, container, model_format
) -> None:
    """On one CPU (--cpuset-cpus 0): the workers resolve threads=1, every answer equals the
    in-process model's."""
    mounted = storage(archives[model_format])
    one = Container(image, "--cpuset-cpus=0", f"-v={mounted}:/mnt/models:ro")
    container.append(one)
    logs = one.wait_ready()
    assert f"({model_format}): 1000 classes, threads=1," in logs, logs
    for name, photo in photo_bytes.items():
        answer = requests.put(f"{one.url()}/predictions/resnet18", data=photo, timeout=120)
        assert answer.status_code == 200, (name, answer.text)
        expected = reference(archives[model_format], model_format, photo)
        assert_same_answer(answer.json(), expected, tolerance=2e-4)


def test_only_the_published_doors_answer_and_a_stop_drains(
    image, archives, photo_bytes, container
) -> None:
    """From the host, through the container's own address: the HTTP, gRPC and metrics doors
    answer; TorchServe's gRPC doors (7070, 7071) and any management port do not. Then a stop
    under load (podman stop: SIGTERM to tini, to the entry point) fails no accepted request."""
    mounted = storage(archives["torchscript"])
    one = Container(image, f"-v={mounted}:/mnt/models:ro")
    container.append(one)
    one.wait_ready()
    address = run("podman", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", one.name)
    address = address.stdout.strip()
    assert address, "the container has no address of its own"

    def answers(port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(2)
            return probe.connect_ex((address, port)) == 0

    assert {port: answers(port) for port in (8080, 8081, 8082, 7070, 7071, 8085, 8086)} == {
        8080: True, 8081: True, 8082: True,
        7070: False, 7071: False, 8085: False, 8086: False,
    }  # fmt: skip
    with Flood(f"http://127.0.0.1:{one.port[8080]}", photo_bytes["rocket"]) as flood:
        time.sleep(3)
        stopped = run("podman", "stop", "-t", "60", one.name, timeout=120)
    assert stopped.returncode == 0
    answered = flood.outcomes.count("answered")
    failed = [o for o in flood.outcomes if o not in ("answered", "door closed")]
    assert answered > 0 and failed == [], f"{len(failed)} accepted requests failed: {failed[:5]}"
    assert "stop: queue drained" in one.logs()
    code = run("podman", "inspect", "-f", "{{.State.ExitCode}}", one.name).stdout.strip()
    assert code == "0", one.logs()


def test_archives_baked_into_the_image(image, archives, photo_bytes, container, tmp_path):
    """The image built after make archive: what model_store/ held is served without a mount."""
    context = tmp_path / "baked"
    context.mkdir()
    shutil.copy(archives["openvino"], context / "resnet18.mar")
    (context / "Dockerfile").write_text(
        f"FROM {image}\nCOPY resnet18.mar /opt/resnet-mar/model-store/resnet18.mar\n"
    )
    baked = f"{IMAGE}-baked"
    run("buildah", "bud", "--isolation", "chroot", "--format", "docker", "-t", baked,
        str(context), timeout=600)  # fmt: skip
    one = Container(baked)
    container.append(one)
    assert "/opt/resnet-mar/model-store" in one.wait_ready()
    photo = photo_bytes["coffee"]
    answer = requests.put(f"{one.url()}/predictions/resnet18", data=photo, timeout=120)
    assert_same_answer(answer.json(), reference(archives["openvino"], "openvino", photo), 2e-4)


def run_runtime_yaml(image: str, archive: Path, protocol: str, started: list) -> tuple:
    """make kserve's YAMLs for ``protocol`` (checked against the kserve SDK's schema), and the
    runtime's container run as they say: image, args, env, ports, CPU and memory limits,
    storage at /mnt/models. The container and the port it publishes."""
    deployment = Deployment("resnet-mar", protocol, "pvc://m/k", "1", "4Gi", image=image)
    mounted = storage(archive, deployment)
    runtime = yaml.safe_load((mounted / "servingruntime.yaml").read_text())
    service = yaml.safe_load((mounted / "inferenceservice.yaml").read_text())
    assert run_client("kserve", "validate_isvc.py", [service, runtime]) == [[], []]
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert service["spec"]["predictor"]["model"]["protocolVersion"] == protocol
    (spec,) = runtime["spec"]["containers"]
    options = [f"-e={e['name']}={e['value']}" for e in spec.get("env", [])]
    options += [f"--cpus={spec['resources']['limits']['cpu']}",
                f"--memory={spec['resources']['limits']['memory'].replace('Gi', 'g')}",
                f"-v={mounted}:/mnt/models:ro"]  # fmt: skip
    if spec.get("command"):
        options.append(f"--entrypoint={json.dumps(spec['command'])}")
    (port,) = [p["containerPort"] for p in spec["ports"]]
    one = Container(spec["image"], *options, *spec.get("args", []), ports=(port,))
    started.append(one)
    assert "(int8): 1000 classes, threads=1," in one.wait_ready()  # --cpus 1: a quota of 1
    return one, port


def test_kserve_own_runtime_over_http(image, archives, photo_bytes, container) -> None:
    """The v2 YAML's container, driven by tritonclient (binary defaults) and KServe's SDK (v1,
    and v2 with binary tensors): answers equal the in-process model's, a broken image is the
    handler's 4xx (not the 500 KServe's model server would make of it)."""
    one, port = run_runtime_yaml(image, archives["int8"], "v2", container)
    photos = [photo_bytes["rocket"], photo_bytes["chelsea"], photo_bytes["coffee"]]
    expected = [reference(archives["int8"], "int8", photo) for photo in photos]
    images = [base64.b64encode(p).decode() for p in photos]
    broken = base64.b64encode(photos[0][:4000]).decode()
    url = one.url(port)
    found = run_client("triton", "triton_defaults.py", {
        "url": url.removeprefix("http://"), "model": "resnet18",
        "requests": [{"images": images, "topk": 5}],
    })  # fmt: skip
    assert found["health"]["model_ready"] == {"answer": True}
    (result,) = found["results"]
    for row, want in enumerate(expected):
        served = dict(zip(result["labels"][row], result["probabilities"][row], strict=True))
        assert_same_answer(served, want, 2e-4)
    for protocol in ("v1", "v2"):
        answers = run_client("kserve", "kserve_rest.py", {
            "base_url": url, "model": "resnet18", "protocol": protocol, "binary": True,
            "requests": [{"images": images[:1], "topk": 5, "id": "one"},
                         {"images": [broken], "id": "bad"}],
        })  # fmt: skip
        if protocol == "v1":
            assert_same_answer(answers[0]["predictions"][0], expected[0], 2e-4)
        else:
            outputs = answers[0]["outputs"]
            served = dict(zip(outputs["labels"]["data"], outputs["probabilities"]["data"],
                              strict=True))  # fmt: skip
            assert_same_answer(served, expected[0], 2e-4)
        assert answers[1]["status"] == 400 and "TruncatedImage" in answers[1]["error"]


def test_kserve_own_runtime_over_grpc(image, archives, photo_bytes, container) -> None:
    """The grpc-v2 YAML's container (its h2c port), driven by tritonclient[grpc] and KServe's
    InferenceGRPCClient: health, answers equal the in-process model's, a broken image is
    INVALID_ARGUMENT with the handler's message."""
    one, port = run_runtime_yaml(image, archives["int8"], "grpc-v2", container)
    photos = [photo_bytes["rocket"], photo_bytes["chelsea"]]
    images = [base64.b64encode(p).decode() for p in photos]
    broken = base64.b64encode(photos[0][:4000]).decode()
    address = f"127.0.0.1:{one.port[port]}"
    found = run_client("triton", "triton_grpc.py", {
        "url": address, "model": "resnet18", "version": "",
        "requests": [{"images": images, "topk": 5}, {"images": [images[0], broken]}],
    })  # fmt: skip
    assert found["health"]["model_ready"] == {"answer": True}
    good, bad = found["results"]
    for row, photo in enumerate(photos):
        served = dict(zip(good["labels"][row], good["probabilities"][row], strict=True))
        assert_same_answer(served, reference(archives["int8"], "int8", photo), 2e-4)
    assert bad["status"] == "StatusCode.INVALID_ARGUMENT" and "TruncatedImage" in bad["error"]
    sdk = run_client("kserve", "kserve_grpc.py", {
        "url": address, "model": "resnet18", "requests": [{"images": images[:1], "id": "g"}],
    })  # fmt: skip
    assert (sdk["live"], sdk["ready"], sdk["model_ready"]) == (True, True, True)
    outputs = sdk["results"][0]["outputs"]
    served = dict(zip(outputs["labels"]["data"], outputs["probabilities"]["data"], strict=True))
    assert_same_answer(served, reference(archives["int8"], "int8", photos[0]), 2e-4)
