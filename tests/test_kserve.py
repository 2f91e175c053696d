"""Integration: the archives on KServe. ``make kserve`` lays out the storage folder; TorchServe
is started from it exactly as KServe's TorchServe runtime starts it, once per protocol (under a
one-CPU quota, like the pod's limit), and driven by clients this project did not write:
tritonclient[http] (v2), KServe's own SDK client (v1, v2), plain HTTP (v1), and TorchServe's
gRPC ``Predictions`` (the grpc-v2 path) with stubs generated from the protos in its jar.
Every answer must equal the in-process reference."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from resnet_mar.kserve_storage import Deployment, KServeError, Ports, write_storage
from resnet_mar.server_doors import REPO_ROOT, free_port
from resnet_mar.torchserve import ServerState, management_call
from tests.client_venvs import run_client
from tests.kserve_runtime import cpu_quota, kserve_torchserve
from tests.reference import load_archive_reference, reference_answer, reference_top
from tests.served_models import VERSION

pytestmark = pytest.mark.integration

BROKEN = "input 1: TruncatedImage: "


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the storage folder, without a server ------------------------------------------------------


def deployment(protocol: str) -> Deployment:
    """KServe's TorchServe runtime (RUNTIME=kserve-torchserve): what these tests start as
    KServe starts it. The own runtime's container is test_container.py's."""
    return Deployment(
        "resnet-mar", protocol, "pvc://models/resnet-mar", cpus="1", memory="4Gi",
        runtime="kserve-torchserve",
    )  # fmt: skip


def test_make_kserve_writes_the_storage_folder(model_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "kserve"
    done = subprocess.run(
        [sys.executable, "-m", "resnet_mar", "kserve", "--model-store", str(model_store),
         "--models", "resnet18", "flowers", "--out", str(out), "--protocol", "grpc-v2",
         "--storage-uri", "s3://bucket/resnet-mar", "--service", "classify", "--cpus", "2",
         "--memory", "6Gi", "--runtime", "kserve-torchserve"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("resnet18", "flowers"):
        copied = out / "model-store" / f"{name}.mar"
        assert copied.read_bytes() == (model_store / f"{name}.mar").read_bytes()
    config = dict(
        line.split("=", 1)
        for line in (out / "config" / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert config["enable_envvars_config"] == "false"  # KServe's envelope is not applied
    assert config["disable_token_authorization"] == "true"
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert config["model_store"] == "/mnt/models/model-store"
    snapshot = json.loads(config["model_snapshot"])
    assert snapshot["modelCount"] == 2
    with zipfile.ZipFile(model_store / "resnet18.mar") as archive:
        archived = yaml.safe_load(archive.read("model-config.yaml"))
    entry = snapshot["models"]["resnet18"][VERSION]
    assert entry["marName"] == "resnet18.mar" and entry["defaultVersion"] is True
    assert entry["batchSize"] == archived["batchSize"]
    assert entry["maxBatchDelay"] == archived["maxBatchDelay"]
    service = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert (model["protocolVersion"], model["runtimeVersion"]) == ("grpc-v2", "0.12.0")
    assert model["storageUri"] == "s3://bucket/resnet-mar"
    assert model["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    assert model["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8085}
    assert model["ports"] == [{"containerPort": 8081, "name": "h2c", "protocol": "TCP"}]


def test_kserves_torchserve_runtime_refuses_formats_its_image_cannot_load(
    model_store: Path, tmp_path: Path
) -> None:
    """pytorch/torchserve-kfs has no onnxruntime or openvino: such archives are refused at
    make kserve, naming RUNTIME=own, instead of failing to load in the cluster."""
    onnx = tmp_path / "resnet18.mar"
    with zipfile.ZipFile(model_store / "resnet18.mar") as source, zipfile.ZipFile(onnx, "w") as to:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "model-config.yaml":
                data = data.replace(b"model_format: torchscript", b"model_format: onnx")
            to.writestr(item, data)
    with pytest.raises(KServeError, match=r"resnet18 \(onnx\).*Use RUNTIME=own"):
        write_storage([onnx], tmp_path / "out", deployment("v2"))
    own = Deployment("resnet-mar", "v2", "pvc://m/k", "1", "4Gi")
    config = (REPO_ROOT / "config.properties").read_text()
    written = write_storage([onnx], tmp_path / "own", own, config_text=config)
    assert (tmp_path / "own" / "servingruntime.yaml") in written


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda: deployment("v3"), "PROTOCOL must be one of"),
        (lambda: Deployment("x", "v2", "pvc://a/b", "1", "1Gi", runtime="y"), "RUNTIME must"),
        (lambda: Deployment("x", "v2", "ftp://host/x", "1", "1Gi"), "not a storage KServe"),
    ],
)
def test_a_storage_folder_that_cannot_work_is_refused(change, complaint) -> None:
    with pytest.raises(KServeError, match=complaint):
        change()


def test_the_inferenceservice_passes_kserves_own_schema(tmp_path: Path, model_store) -> None:
    documents = []
    for protocol in ("v1", "v2", "grpc-v2"):
        write_storage([model_store / "resnet18.mar"], tmp_path / protocol, deployment(protocol))
        documents.append(
            yaml.safe_load((tmp_path / protocol / "inferenceservice.yaml").read_text())
        )
    broken = json.loads(json.dumps(documents[1]))
    model = broken["spec"]["predictor"]["model"]
    model["modelformat"] = model.pop("modelFormat")
    model["resources"]["limits"]["cpu"] = ["1"]
    found = run_client("kserve", "validate_isvc.py", [*documents, broken])
    assert found[:3] == [[], [], []]
    assert any("modelformat: unknown field" in e for e in found[3]), found[3]
    assert any("limits.cpu: expected str" in e for e in found[3]), found[3]


# --- servers started as KServe starts them -----------------------------------------------------


@dataclass
class KServed:
    protocol: str
    state: ServerState
    ports: Ports
    workdir: Path

    @property
    def url(self) -> str:
        return self.state.endpoints.inference

    def model_log(self) -> str:
        return (self.workdir / "logs" / "model_log.log").read_text(errors="replace")

    def worker_pid(self) -> int:
        _, described = management_call(self.state.endpoints.management, "GET", "/models/resnet18")
        (pid,) = [w["pid"] for m in described for w in m["workers"]]
        return pid


@pytest.fixture(scope="module")
def kserve_archive(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 packed as make archive packs it, with a short maxRetryTimeoutInSec so that the
    readiness test sees /ping turn Unhealthy within seconds rather than a minute."""
    build = tmp_path_factory.mktemp("kserve_build")
    for item in ("resnet18.pt", "resnet18.json"):
        shutil.copy(build_dir / item, build)
    shutil.copytree(build_dir / "resnet18", build / "resnet18")
    config_file = build / "resnet18" / "model-config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["maxRetryTimeoutInSec"] = 8
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    store = build / "store"
    done = subprocess.run(
        [str(REPO_ROOT / "archive.sh"), "-b", str(build), "-s", str(store), "-v", VERSION,
         "resnet18"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return store / "resnet18.mar"


@pytest.fixture(scope="class")
def kserved(request, kserve_archive: Path, tmp_path_factory) -> Iterator[KServed]:
    """One server for a test class: ``request.param`` is the protocol, or "v2 envelope" for a
    config that does apply KServe's envelope (enable_envvars_config=true)."""
    protocol, _, variant = request.param.partition(" ")
    ports = Ports("127.0.0.1", *(free_port() for _ in range(5)))
    workdir = tmp_path_factory.mktemp(f"kserve_{protocol}")
    storage = workdir / "storage"
    write_storage([kserve_archive], storage, deployment(protocol), ports)
    if variant == "envelope":
        config = storage / "config" / "config.properties"
        config.write_text(
            config.read_text().replace("enable_envvars_config=false", "enable_envvars_config=true")
        )
    with (
        cpu_quota(1.0) as procs,
        kserve_torchserve(
            storage, protocol, workdir / "server", ports, models=["resnet18"], cgroup_procs=procs
        ) as state,
    ):
        yield KServed(protocol, state, ports, workdir / "server")


@pytest.fixture(scope="module")
def reference(kserve_archive: Path):
    return load_archive_reference(kserve_archive, "resnet18.pt")


def assert_rows(labels: list, probabilities: list, expected: list[tuple[str, float]]) -> None:
    assert labels == [label for label, _ in expected]
    assert probabilities == pytest.approx([p for _, p in expected], abs=1e-4)


def v2_request(images: list[bytes], request_id: str, topk: int | None = None) -> dict:
    return {"images": [b64(i) for i in images], "id": request_id, "topk": topk}


def broken_among_good(photo_bytes: dict[str, bytes]) -> list[bytes]:
    return [photo_bytes["rocket"], photo_bytes["rocket"][:20_000], photo_bytes["coffee"]]


@pytest.mark.parametrize("kserved", ["v1"], indirect=True, scope="class")
class TestV1:
    def test_threads_follow_the_pods_cpu_quota(self, kserved: KServed) -> None:
        """An archive built on this 2-CPU machine, served under a 1-CPU quota: one thread."""
        assert len(os.sched_getaffinity(0)) >= 2, "needs 2 CPUs to tell the quota from all"
        assert re.search(
            r"loaded resnet18\.pt \(torchscript\): 1000 classes, threads=1,", kserved.model_log()
        )

    def test_plain_http_one_several_concurrent_and_a_broken_image(
        self, kserved: KServed, reference, photo_bytes
    ) -> None:
        model, labels = reference
        url = f"{kserved.url}/v1/models/resnet18:predict"
        names = list(photo_bytes)
        bodies = [{"instances": [{"data": b64(photo_bytes[n])}]} for n in names]
        bodies.append({"instances": [b64(photo_bytes[n]) for n in names[:3]], "topk": 3})
        bodies.append({"instances": [b64(x) for x in broken_among_good(photo_bytes)]})
        bodies += [{"instances": [{"b64": b64(photo_bytes["astronaut"])}]}] * 4
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = list(
                pool.map(lambda body: requests.post(url, json=body, timeout=300), bodies)
            )
        for name, answer in zip(names, answers, strict=False):
            assert answer.status_code == 200, answer.text
            (prediction,) = answer.json()["predictions"]
            assert prediction == pytest.approx(
                reference_answer(model, labels, photo_bytes[name]), abs=1e-4
            )
        several = answers[len(names)].json()["predictions"]
        for name, prediction in zip(names[:3], several, strict=True):
            assert prediction == pytest.approx(
                reference_answer(model, labels, photo_bytes[name], 3), abs=1e-4
            )
        refused = answers[len(names) + 1]
        assert refused.status_code == 400 and refused.json()["error"].startswith(BROKEN)
        assert all(a.status_code == 200 for a in answers[len(names) + 2 :])

    def test_kserves_own_client(self, kserved: KServed, reference, photo_bytes) -> None:
        model, labels = reference
        job = {
            "base_url": kserved.url,
            "model": "resnet18",
            "protocol": "v1",
            "requests": [
                v2_request([photo_bytes["grace_hopper"]] * 2, "k", 2),
                v2_request(broken_among_good(photo_bytes), "b"),
            ],
        }
        good, broken = run_client("kserve", "kserve_rest.py", job)
        expected = reference_answer(model, labels, photo_bytes["grace_hopper"], 2)
        assert good["predictions"] == [pytest.approx(expected, abs=1e-4)] * 2
        assert broken["status"] == 400 and broken["error"].startswith(BROKEN)

    def test_ping_turns_unhealthy_when_the_model_cannot_answer(self, kserved: KServed) -> None:
        """The readiness signal of the InferenceService (its probe reads /ping): the model file
        disappears and the worker dies; it cannot load again, and /ping says so."""
        ping = f"{kserved.url}/ping"
        assert requests.get(ping, timeout=10).json() == {"status": "Healthy"}
        for extracted in (kserved.workdir / "tmp" / "models").glob("*/resnet18.pt"):
            extracted.rename(extracted.with_suffix(".gone"))
        os.kill(kserved.worker_pid(), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = requests.get(ping, timeout=10)
            if answer.status_code == 500:
                break
            time.sleep(1)
        assert answer.status_code == 500 and answer.json() == {"status": "Unhealthy"}


@pytest.mark.parametrize("kserved", ["v2"], indirect=True, scope="class")
class TestOpenInference:
    def test_tritonclient_one_several_concurrent_and_a_broken_image(
        self, kserved: KServed, reference, photo_bytes
    ) -> None:
        model, labels = reference
        names = list(photo_bytes)
        requests_ = [v2_request([photo_bytes[n]], f"one-{n}") for n in names]
        requests_.append(v2_request([photo_bytes[n] for n in names], "several", 3))
        requests_.append(v2_request(broken_among_good(photo_bytes), "broken"))
        requests_ += [v2_request([photo_bytes["chelsea"]], f"more-{i}") for i in range(2)]
        url = kserved.url.removeprefix("http://")
        results = run_client(
            "triton", "triton_v2.py", {"url": url, "model": "resnet18", "requests": requests_}
        )
        for name, result in zip(names, results, strict=False):
            assert result["id"] == f"one-{name}"
            expected = reference_top(model, labels, photo_bytes[name])
            assert_rows(result["labels"][0], result["probabilities"][0], expected)
        several = results[len(names)]
        for row, name in enumerate(names):
            expected = reference_top(model, labels, photo_bytes[name], 3)
            assert_rows(several["labels"][row], several["probabilities"][row], expected)
        broken = results[len(names) + 1]
        assert broken["status"] == "400" and broken["error"].startswith(BROKEN), broken
        assert [r["id"] for r in results[len(names) + 2 :]] == ["more-0", "more-1"]

    def test_kserves_own_client(self, kserved: KServed, reference, photo_bytes) -> None:
        model, labels = reference
        job = {
            "base_url": kserved.url,
            "model": "resnet18",
            "protocol": "v2",
            "requests": [v2_request([photo_bytes["rocket"], photo_bytes["coffee"]], "kv2", 4)],
        }
        (result,) = run_client("kserve", "kserve_rest.py", job)
        assert result["id"] == "kv2"
        outputs = result["outputs"]
        assert (
            outputs["labels"]["shape"] == [2, 4] and outputs["probabilities"]["datatype"] == "FP32"
        )
        for row, name in enumerate(("rocket", "coffee")):
            expected = reference_top(model, labels, photo_bytes[name], 4)
            span = slice(4 * row, 4 * row + 4)
            assert_rows(
                outputs["labels"]["data"][span], outputs["probabilities"]["data"][span], expected
            )

    def test_raw_predictions_still_work_beside_kserve(
        self, kserved: KServed, reference, photo_bytes
    ):
        """KServe sets TS_SERVICE_ENVELOPE; with this storage's config TorchServe does not apply
        it, so /predictions keeps working for direct clients (an applied envelope used to fail
        raw bodies with 503)."""
        model, labels = reference
        answer = requests.put(
            f"{kserved.url}/predictions/resnet18", data=photo_bytes["rocket"], timeout=120
        )
        assert answer.json() == pytest.approx(
            reference_answer(model, labels, photo_bytes["rocket"]), abs=1e-4
        )

    def test_prometheus_counts_requests_per_outcome_and_times_them(self, kserved: KServed) -> None:
        text = requests.get(f"{kserved.state.endpoints.metrics}/metrics", timeout=30).text
        counts = dict(re.findall(r'ResnetMarRequests\{[^}]*Outcome="(\w+)"[^}]*\} ([0-9.]+)', text))
        assert float(counts["answered"]) >= 10 and float(counts["TruncatedImage"]) >= 1, counts
        assert re.search(r'ResnetMarRequestSeconds_bucket\{[^}]*ModelName="resnet18"', text)


def grpc_stubs(folder: Path):
    """Python stubs for TorchServe's gRPC API, from the protos shipped inside its jar."""
    import ts
    from grpc_tools import protoc

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as archive:
        for member in ("proto/inference.proto", "google/rpc/status.proto"):
            archive.extract(member, folder)
    include = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{folder / 'proto'}", f"-I{folder}", f"-I{include}",
         f"--python_out={folder}", f"--grpc_python_out={folder}",
         str(folder / "proto" / "inference.proto"), str(folder / "google" / "rpc" / "status.proto")]
    )  # fmt: skip
    assert status == 0, "protoc failed on TorchServe's inference.proto"
    sys.path.insert(0, str(folder))
    import inference_pb2
    import inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="class")
def stub(kserved: KServed, tmp_path_factory):
    """A channel to the server's gRPC inference port, with TorchServe's own stubs."""
    import grpc

    messages, services = grpc_stubs(tmp_path_factory.mktemp("stubs"))
    channel = grpc.insecure_channel(f"127.0.0.1:{kserved.ports.grpc_inference}")
    yield messages, services.InferenceAPIsServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("kserved", ["grpc-v2"], indirect=True, scope="class")
class TestGrpc:
    def predictions(self, stub, images: list[bytes], request_id: str) -> dict:
        """What KServe's model server sends TorchServe for a grpc-v2 call: the Open Inference
        request as JSON under "data"."""
        messages, service = stub
        body = {
            "id": request_id,
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "data": [b64(i) for i in images],
                }
            ],
        }
        call = messages.PredictionsRequest(
            model_name="resnet18", input={"data": json.dumps(body).encode()}
        )
        return json.loads(service.Predictions(call, timeout=300).prediction)

    def test_unary_predictions_one_several_concurrent_and_a_broken_image(
        self, kserved: KServed, stub, reference, photo_bytes
    ) -> None:
        model, labels = reference
        calls = [([photo_bytes[n]], n) for n in photo_bytes]
        calls += [
            (list(photo_bytes.values()), "several"),
            (broken_among_good(photo_bytes), "broken"),
        ]
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            answers = list(pool.map(lambda c: self.predictions(stub, *c), calls))
        for (images, request_id), answer in zip(calls[:-1], answers, strict=False):
            assert answer["id"] == request_id and answer["model_name"] == "resnet18"
            found, probs = answer["outputs"][0]["data"], answer["outputs"][1]["data"]
            for row, image in enumerate(images):
                assert_rows(
                    found[5 * row : 5 * row + 5],
                    probs[5 * row : 5 * row + 5],
                    reference_top(model, labels, image),
                )
        # gRPC cannot carry a per-request status from TorchServe (its frontend ignores it): the
        # call succeeds and the body is the refusal.
        assert answers[-1]["error"].startswith(BROKEN)

    def test_a_stream_call_leaves_the_model_answering(self, kserved: KServed, stub, photo_bytes):
        """StreamPredictions used to make TorchServe kill the worker (and fail the REST requests
        batched with it with 500 "Worker died")."""
        messages, service = stub
        worker = kserved.worker_pid()
        photo = photo_bytes["rocket"]

        def rest(_: int) -> int:
            return requests.put(
                f"{kserved.url}/predictions/resnet18", data=photo, timeout=300
            ).status_code

        def stream(_: int) -> int:
            call = messages.PredictionsRequest(model_name="resnet18", input={"data": photo})
            return len(list(service.StreamPredictions(call, timeout=300)))

        with ThreadPoolExecutor(max_workers=12) as pool:
            rest_calls = pool.map(rest, range(24))
            streams = pool.map(stream, range(3))
            statuses, replies = list(rest_calls), list(streams)
        assert statuses == [200] * 24 and replies == [1, 1, 1]
        assert kserved.worker_pid() == worker


@pytest.mark.parametrize("kserved", ["v2 envelope"], indirect=True, scope="class")
class TestEnvelopeApplied:
    def test_batching_holds_when_a_config_applies_kserves_envelope(
        self, kserved: KServed, reference, photo_bytes
    ) -> None:
        """With enable_envvars_config=true, TorchServe wraps the handler in its kservev2
        envelope (which answers only the first request of a batch): the handler bypasses it,
        and 8 concurrent requests are each answered."""
        assert "envelope passes requests through" in kserved.model_log()
        model, labels = reference
        names = [*photo_bytes, "rocket", "coffee", "chelsea"]
        url = kserved.url.removeprefix("http://")
        job = {
            "url": url,
            "model": "resnet18",
            "requests": [v2_request([photo_bytes[n]], n) for n in names],
        }
        for name, result in zip(names, run_client("triton", "triton_v2.py", job), strict=True):
            expected = reference_top(model, labels, photo_bytes[name])
            assert_rows(result["labels"][0], result["probabilities"][0], expected)
        raw = requests.put(
            f"{kserved.url}/predictions/resnet18", data=photo_bytes["coffee"], timeout=120
        )
        assert raw.status_code == 200
