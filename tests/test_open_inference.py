"""Integration: the Open Inference Protocol as its own clients speak it by default, against the
server make serve runs. tritonclient[http] sends images and asks outputs as binary tensors unless
told otherwise, and checks health and metadata at the protocol's paths; every answer must equal
the in-process reference, and a broken image must fail only its own request."""

from __future__ import annotations

import base64
import json
import struct

import pytest
import requests

from resnet_mar.torchserve import RunningServer
from tests.client_venvs import run_client
from tests.reference import assert_same_answer, reference_answer, reference_top
from tests.served_models import VERSION

pytestmark = pytest.mark.integration

MODEL_METADATA = {
    "name": "resnet18",
    "versions": [VERSION],
    "platform": "pytorch_torchscript",
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [
        {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
    ],
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def triton_defaults(server: RunningServer, model: str, requests_: list[dict]) -> dict:
    url = server.endpoints.inference.removeprefix("http://")
    return run_client(
        "triton", "triton_defaults.py", {"url": url, "model": model, "requests": requests_}
    )


def assert_rows_equal_reference(result: dict, images: list[bytes], reference, topk: int) -> None:
    model, labels = reference
    assert len(result["labels"]) == len(images)
    for row, image in enumerate(images):
        expected = reference_top(model, labels, image, topk=topk)
        assert result["labels"][row] == [label for label, _ in expected]
        assert result["probabilities"][row] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_tritonclient_with_its_defaults(server, references, photo_bytes) -> None:
    """Binary tensors both ways (no outputs named: the whole answer binary; outputs named with
    their default binary_data), 1, 3 and 8 images a request, 8 requests at once, a broken image
    among good ones."""
    photos = list(photo_bytes.values())
    jpeg = photo_bytes["rocket"]
    batches = [photos[:1], photos[:3], (photos * 3)[:8], [photos[0], jpeg[:4000], photos[1]]]
    asked = [
        {"images": [b64(i) for i in images], "topk": 3, "outputs": n % 2 == 1}
        for n, images in enumerate(batches)
    ] * 2
    found = triton_defaults(server, "resnet18", asked)
    for n, images in enumerate(batches * 2):
        result = found["results"][n]
        if n % len(batches) == 3:
            assert result["status"] == "400", result
            assert result["error"].startswith("input 1: TruncatedImage: "), result
            continue
        assert_rows_equal_reference(result, images, references["resnet18"], topk=3)


def test_health_and_metadata_at_the_protocols_paths(server) -> None:
    """The front door answers them from TorchServe's workers and the archives."""
    health = triton_defaults(server, "resnet18", [])["health"]
    assert health["server_live"] == {"answer": True}
    assert health["server_ready"] == {"answer": True}
    assert health["model_ready"] == {"answer": True}
    assert health["server_metadata"]["answer"]["extensions"] == ["binary_tensor_data"]
    assert health["model_metadata"]["answer"] == MODEL_METADATA
    versioned = requests.get(
        f"{server.endpoints.inference}/v2/models/resnet18/versions/{VERSION}/ready", timeout=30
    )
    assert (versioned.status_code, versioned.json()) == (200, {"name": "resnet18", "ready": True})
    missing = requests.get(f"{server.endpoints.inference}/v2/models/nope/ready", timeout=30)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_a_binary_answer_carries_its_header_and_sizes(server, references, photo_bytes) -> None:
    """The raw HTTP exchange, as tritonclient makes it: the response's JSON head is as long as
    its Inference-Header-Content-Length says, and each output's bytes as long as its
    binary_data_size."""
    image = photo_bytes["chelsea"]
    tail = struct.pack("<I", len(image)) + image
    head = json.dumps(
        {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": len(tail)}}],
            "parameters": {"binary_data_output": True, "topk": 2},
        }
    ).encode()  # fmt: skip
    answer = requests.post(
        f"{server.endpoints.inference}/v2/models/resnet18/infer",
        data=head + tail,
        headers={"Inference-Header-Content-Length": str(len(head))},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/octet-stream"
    length = int(answer.headers["Inference-Header-Content-Length"])
    document = json.loads(answer.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in document["outputs"]]
    assert length + sum(sizes) == len(answer.content)
    probabilities = struct.unpack("<2f", answer.content[length + sizes[0] :])
    expected = reference_top(*references["resnet18"], image, topk=2)
    assert list(probabilities) == pytest.approx([p for _, p in expected], abs=1e-4)


@pytest.mark.parametrize(
    ("body", "headers", "kind"),
    [
        (b'{"inputs": [{"name": "image",', {"Content-Type": "application/json"}, "MalformedJSON"),
        (b"--zzz\r\nbroken", {"Content-Type": "multipart/form-data; boundary=zzz"},
         "MalformedMultipart"),
    ],
)  # fmt: skip
def test_protocol_errors_are_named_for_what_is_wrong(server, body, headers, kind) -> None:
    answer = requests.post(
        f"{server.endpoints.inference}/predictions/resnet18", data=body, headers=headers, timeout=60
    )
    assert (answer.status_code, answer.json()["type"]) == (400, kind), answer.text


def test_a_non_ascii_option_is_echoed_as_sent(server, photo_bytes) -> None:
    answer = requests.put(
        f"{server.endpoints.inference}/predictions/resnet18",
        data=photo_bytes["chelsea"],
        headers={"X-TopK": "③".encode()},
        timeout=60,
    )
    assert answer.status_code == 400 and "'③'" in answer.json()["message"], answer.text


def test_v1_and_v2_answers_are_compact(server, photo_bytes) -> None:
    body = {"instances": [{"b64": b64(photo_bytes["chelsea"])}], "topk": 1}
    answer = requests.post(
        f"{server.endpoints.inference}/v1/models/resnet18:predict", json=body, timeout=60
    )
    assert answer.status_code == 200 and "\n" not in answer.text and ": " not in answer.text


def test_kserve_sdk_rest_v2_binary_and_v1(server, references, photo_bytes) -> None:
    """KServe's own REST client: v2, images set with set_data_from_numpy's default (binary),
    and v1."""
    photos = list(photo_bytes.values())[:3]
    job = {
        "base_url": server.endpoints.inference,
        "model": "resnet18",
        "protocol": "v2",
        "binary": True,
        "requests": [
            {"images": [b64(i) for i in photos], "topk": 2, "id": "k3"},
            {"images": [b64(photos[0]), b64(photo_bytes["rocket"][:4000])], "id": "bad"},
        ],
    }
    good, bad = run_client("kserve", "kserve_rest.py", job)
    assert good["id"] == "k3"
    assert_outputs_equal_reference(good["outputs"], photos, references["resnet18"], topk=2)
    assert bad["status"] == 400 and bad["error"].startswith("input 1: TruncatedImage: ")
    good, bad = run_client("kserve", "kserve_rest.py", {**job, "protocol": "v1"})
    model, labels = references["resnet18"]
    for served, photo in zip(good["predictions"], photos, strict=True):
        assert_same_answer(served, reference_answer(model, labels, photo, topk=2))
    assert bad["status"] == 400 and bad["error"].startswith("input 1: TruncatedImage: ")


def assert_outputs_equal_reference(outputs: dict, images: list[bytes], reference, topk: int):
    """Open Inference outputs (flat data, shape [n, k]) against the reference, row by row."""
    assert outputs["labels"]["shape"] == [len(images), topk]
    labels, probabilities = outputs["labels"]["data"], outputs["probabilities"]["data"]
    rows = {
        "labels": [labels[topk * r : topk * (r + 1)] for r in range(len(images))],
        "probabilities": [probabilities[topk * r : topk * (r + 1)] for r in range(len(images))],
    }
    assert_rows_equal_reference(rows, images, reference, topk)


def grpc_batches(photo_bytes) -> list[list[bytes]]:
    """1, 3 and 8 images a request, and a broken image among good ones (the last)."""
    photos = list(photo_bytes.values())
    return [photos[:1], photos[:3], (photos * 3)[:8], [photos[0], photo_bytes["rocket"][:4000]]]


def test_tritonclient_grpc_with_its_defaults(server, references, photo_bytes) -> None:
    """BYTES in raw_input_contents, parameters.topk, a versioned and an unversioned call, 8 at
    once; a refused image is INVALID_ARGUMENT with the handler's message, alone."""
    batches = grpc_batches(photo_bytes)
    asked = [{"images": [b64(i) for i in images], "topk": 3} for images in batches] * 2
    for version in ("", VERSION):
        job = {"url": server.endpoints.grpc, "model": "resnet18", "version": version,
               "requests": asked}  # fmt: skip
        found = run_client("triton", "triton_grpc.py", job)
        health = found["health"]
        assert [health[k]["answer"] for k in ("server_live", "server_ready", "model_ready")] == [
            True, True, True,
        ]  # fmt: skip
        assert health["unknown_model_ready"]["status"] == "StatusCode.NOT_FOUND"
        assert health["model_metadata"]["answer"] == {
            **MODEL_METADATA,
            "inputs": [{**MODEL_METADATA["inputs"][0], "shape": ["-1"]}],
            "outputs": [{**o, "shape": ["-1", "-1"]} for o in MODEL_METADATA["outputs"]],
        }  # (protobuf's JSON writes int64 as strings)
        for n, images in enumerate(batches * 2):
            result = found["results"][n]
            if n % len(batches) == len(batches) - 1:
                assert result["status"] == "StatusCode.INVALID_ARGUMENT", result
                assert result["error"].startswith("input 1: TruncatedImage: "), result
                continue
            assert_rows_equal_reference(result, images, references["resnet18"], topk=3)


def test_kserve_sdk_grpc(server, references, photo_bytes) -> None:
    batches = grpc_batches(photo_bytes)
    asked = [{"images": [b64(i) for i in images], "topk": 2, "id": f"g{n}"}
             for n, images in enumerate(batches)]  # fmt: skip
    job = {"url": server.endpoints.grpc, "model": "resnet50", "requests": asked}
    found = run_client("kserve", "kserve_grpc.py", job)
    assert (found["live"], found["ready"], found["model_ready"]) == (True, True, True)
    for n, images in enumerate(batches[:-1]):
        assert found["results"][n]["id"] == f"g{n}"
        outputs = found["results"][n]["outputs"]
        assert_outputs_equal_reference(outputs, images, references["resnet50"], topk=2)
    assert found["results"][-1]["status"] == "INVALID_ARGUMENT"
    assert found["results"][-1]["error"].startswith("input 1: TruncatedImage: ")
