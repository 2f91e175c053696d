"""KServe v1 and Open Inference (v2) bodies: recognised from the body alone, answered per image,
refused with {"error": ...} naming the image at fault; and TorchServe's KServe envelopes, which
break batching, bypassed inside the worker."""

from __future__ import annotations

import base64
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from resnet_serving.binary_tensors import HEADER
from resnet_serving.inference_protocols import (
    KSERVE_V1,
    OPEN_INFERENCE,
    PREDICTIONS,
    ModelIdentity,
    bounded,
    encode_answer,
    error_body,
    protocol_of,
    read_request,
)
from resnet_serving.input_errors import BadInput
from tests.fake_context import unpacked_model_dir
from tests.reference import assert_same_answer, reference_answer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read(request: dict, headers: dict | None = None, max_images: int = 32, classes: int = 1000):
    return read_request(
        request, headers or {}, default_topk=5, num_classes=classes, max_images=max_images
    )


def v2_body(images: list[bytes], **extra) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    return {"inputs": [{**tensor, "data": [b64(i) for i in images]}], **extra}


@pytest.mark.parametrize(
    ("request_", "protocol"),
    [
        ({"body": b"\xff\xd8\xff\xe0 jpeg"}, PREDICTIONS),
        ({"body": {"data": "aGk="}}, PREDICTIONS),
        ({"body": {"instances": []}}, KSERVE_V1),
        ({"body": b'  {"instances": [1]}'}, KSERVE_V1),  # no Content-Type: bytes
        ({"body": {"inputs": []}}, OPEN_INFERENCE),
        ({"data": bytearray(b'{"id": "g", "inputs": []}')}, OPEN_INFERENCE),  # gRPC Predictions
        ({"body": b"{not json"}, PREDICTIONS),
        ({"body": "[1, 2]"}, PREDICTIONS),
    ],
)
def test_protocol_is_recognised_from_the_body(request_, protocol) -> None:
    assert protocol_of(request_, {}) == protocol


def test_a_binary_tensor_request_is_open_inference_whatever_its_body() -> None:
    assert protocol_of({"body": b'{"inputs": []}\x00\x01'}, {HEADER: "14"}) == OPEN_INFERENCE


def test_v1_instances_in_every_form(photo_bytes) -> None:
    jpeg, png = photo_bytes["rocket"], photo_bytes["chelsea"]
    body = {"instances": [{"data": b64(jpeg)}, {"b64": b64(png)}, b64(jpeg)], "topk": 3}
    parsed = read({"body": body})
    assert (parsed.protocol, parsed.images, parsed.topk) == (KSERVE_V1, [jpeg, png, jpeg], 3)
    assert read({"body": json.dumps(body).encode()}).images == parsed.images


def test_v2_images_options_id_and_outputs(photo_bytes) -> None:
    jpeg, png = photo_bytes["rocket"], photo_bytes["chelsea"]
    body = v2_body([jpeg, png], id="r-7", parameters={"topk": 2}, outputs=[{"name": "labels"}])
    parsed = read({"body": body})
    assert parsed.protocol == OPEN_INFERENCE and parsed.images == [jpeg, png]
    assert (parsed.topk, parsed.request_id, parsed.outputs) == (2, "r-7", ("labels",))
    nested = v2_body([jpeg, png])
    nested["inputs"][0].update(shape=[2, 1], data=[[b64(jpeg)], [b64(png)]])
    assert read({"body": nested}).images == [jpeg, png]
    assert read({"body": v2_body([jpeg])}, {"x-topk": "4"}).topk == 4  # a direct client's header


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"instances": []}, "non-empty list"),
        ({"instances": [{"image": "aGk="}]}, 'under "data" or "b64"'),
        ({"instances": [42]}, "not a JSON int"),
        ({"instances": ["aGk="], "topk": "³"}, "ASCII digits"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1.0]}]}, "must be BYTES"),
        ({"inputs": [{"datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}, "shape [2]"),
        ({"inputs": [{"datatype": "BYTES", "shape": [-1], "data": ["aGk="]}]}, "shape [-1]"),
        ({"inputs": [{"datatype": "BYTES", "shape": [1], "data": [3]}]}, "list of base64"),
        ({"inputs": [{}, {}]}, "exactly one input"),
        ({"inputs": [{"datatype": "BYTES", "shape": [1], "data": ["aGk="]}], "id": 5}, '"id"'),
        ({**v2_body([b"x"]), "outputs": [{"name": "logits"}]}, "unknown output"),
        ({**v2_body([b"x"]), "parameters": {"topk": "①"}}, "ASCII digits"),
    ],
)
def test_malformed_v1_and_v2_bodies_are_400_saying_what_is_wrong(body, says) -> None:
    with pytest.raises(BadInput) as err:
        read({"body": body})
    assert err.value.status == 400 and says in err.value.message


def test_a_bad_base64_image_names_its_position() -> None:
    with pytest.raises(BadInput) as err:
        read({"body": {"instances": ["aGk=", "!!not base64!!"]}})
    assert err.value.position == 1
    assert error_body(KSERVE_V1, err.value)["error"].startswith("input 1: ")


def test_too_many_images_in_one_request_is_413() -> None:
    with pytest.raises(BadInput) as err:
        read({"body": {"instances": ["aGk="] * 5}}, max_images=4)
    assert err.value.status == 413 and err.value.kind == "TooManyImages"


def test_answers_in_each_protocols_shape() -> None:
    labels = ["cat", "dog", "crane", "crane"]
    rows = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.6, 0.25, 0.1, 0.05])]
    model = ModelIdentity("m", "2.0")
    one = read({"body": b"\xff\xd8\xff\xe0"}, classes=4)
    assert list(encode_answer(one, rows[:1], labels, model).body) == ["crane", "dog", "cat"]
    v1 = read({"body": {"instances": ["aGk=", "aGk="], "topk": 2}}, classes=4)
    sent = encode_answer(v1, rows, labels, model)
    assert " " not in sent.body and sent.content_type == "application/json"  # compact
    assert json.loads(sent.body) == {
        "predictions": [{"crane": pytest.approx(0.4)}, pytest.approx({"cat": 0.6, "dog": 0.25})]
    }
    v2 = read({"body": v2_body([b"a", b"b"], id="x", parameters={"topk": 2})}, classes=4)
    answer = json.loads(encode_answer(v2, rows, labels, model).body)
    assert answer["model_name"] == "m" and answer["model_version"] == "2.0" and answer["id"] == "x"
    assert [o["name"] for o in answer["outputs"]] == ["labels", "probabilities"]
    labels_out, probs_out = answer["outputs"]
    assert (labels_out["datatype"], labels_out["shape"]) == ("BYTES", [2, 2])
    assert labels_out["data"] == ["crane", "crane", "cat", "dog"]  # rows, best first
    assert (probs_out["datatype"], probs_out["shape"]) == ("FP32", [2, 2])
    assert probs_out["data"] == pytest.approx([0.4, 0.3, 0.6, 0.25])


def test_errors_in_each_protocols_shape() -> None:
    refusal = BadInput(400, "TruncatedImage", "the JPEG data cannot be decoded").at(1)
    assert error_body(PREDICTIONS, refusal) == refusal.body()
    expected = {"error": "input 1: TruncatedImage: the JPEG data cannot be decoded"}
    assert error_body(OPEN_INFERENCE, refusal) == expected
    whole = BadInput(400, "MalformedJSON", "no inputs")
    assert error_body(KSERVE_V1, whole) == {"error": "MalformedJSON: no inputs"}


def test_a_batch_mixing_protocols_is_answered_request_by_request(
    handler_and_context, build_dir, photo_bytes
) -> None:
    """One TorchServe batch: a v2 request with two images, a v1 request with a broken image
    among good ones, a /predictions request: one forward pass, each answer its own."""
    handler, context = handler_and_context
    model = torch.jit.load(str(build_dir / "resnet18.pt")).eval()
    labels = json.loads((build_dir / "resnet18" / "index_to_name.json").read_text())
    jpeg, png = photo_bytes["rocket"], photo_bytes["chelsea"]
    batch = [
        {"body": v2_body([jpeg, png], id="a", parameters={"topk": 3})},
        {"body": {"instances": [b64(png), b64(jpeg[:5000])]}},
        {"body": png},
    ]
    context.headers, context.statuses = [{}, {}, {}], {}
    forward_batches = []
    original = handler.model
    handler.model = lambda batch: forward_batches.append(len(batch)) or original(batch)
    try:
        answers = handler.handle(batch, context)
    finally:
        handler.model = original
    assert forward_batches == [3]  # the 2 + 1 good images, together
    v2 = json.loads(answers[0])
    assert v2["id"] == "a" and v2["outputs"][0]["shape"] == [2, 3]
    for row, photo in enumerate((jpeg, png)):
        expected = reference_answer(model, labels, photo, topk=3)
        served = v2["outputs"][1]["data"][3 * row : 3 * row + 3]
        assert v2["outputs"][0]["data"][3 * row : 3 * row + 3] == list(expected)
        assert served == pytest.approx(list(expected.values()), abs=1e-4)
    assert context.statuses == {1: (400, "TruncatedImage")}
    assert json.loads(answers[1])["error"].startswith("input 1: TruncatedImage: ")
    assert_same_answer(answers[2], reference_answer(model, labels, png))
    outcomes = [dims["Outcome"] for _, _, dims in context.metrics.counters[-3:]]
    assert outcomes == ["answered", "TruncatedImage", "answered"]
    assert {dims["ModelName"] for _, _, dims in context.metrics.histograms} == {"resnet18"}


@pytest.mark.parametrize("envelope", ["kserve", "kservev2"])
def test_torchserves_envelopes_are_bypassed_and_batching_holds(
    envelope, build_dir, tmp_path, photo_bytes
) -> None:
    """TorchServe's own loader wraps the handler in its KServe envelope, as a server configured
    with service_envelope does; a batch of several requests still gets one answer each."""
    from ts.model_loader import TsModelLoader

    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path / "model")
    handlers = Path(__import__("resnet_handler").__file__).parent
    shutil.copy(handlers / "resnet_handler.py", model_dir / "resnet_handler.py")
    shutil.copytree(handlers / "resnet_serving", model_dir / "resnet_serving")
    manifest = {
        "model": {
            "modelName": "resnet18",
            "modelVersion": "1.0",
            "serializedFile": "resnet18.pt",
            "handler": "resnet_handler.py",
            "configFile": "model-config.yaml",
        }
    }
    (model_dir / "MAR-INF").mkdir()
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    service = TsModelLoader().load(
        "resnet18", str(model_dir), "resnet_handler.py", None, 8, envelope, True
    )
    jpeg = photo_bytes["rocket"]
    v1 = {"instances": [b64(jpeg)]}
    bodies = [v2_body([jpeg]), v1] * 2
    batch = [
        {
            "requestId": f"r{i}".encode(),
            "parameters": [{"name": "body", "contentType": "application/json", "value": body}],
        }
        for i, body in enumerate(bodies)
    ]
    headers, inputs, ids = service.retrieve_data_for_inference(batch)
    service.context.request_ids, service.context.request_processor = ids, headers
    answers = service._entry_point(inputs, service.context)
    assert len(answers) == 4
    assert [("predictions" in a, "outputs" in json.loads(a)) for a in answers] == [
        (False, True),
        (True, False),
    ] * 2


def binary_request(images: list[bytes], **extra) -> tuple[dict, dict]:
    """A v2 request as tritonclient sends it with binary_data left at its default: the JSON,
    then each image length-prefixed, and the header saying where the JSON ends."""
    tail = b"".join(struct.pack("<I", len(i)) + i for i in images)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
    head = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(tail)}}], **extra}
    ).encode()
    return {"body": head + tail}, {HEADER: str(len(head))}


def binary_outputs(answer) -> dict:
    """An answer split as tritonclient's InferResult splits it: JSON head, binary outputs."""
    ((name, length),) = answer.headers
    assert name == "Inference-Header-Content-Length"
    head, tail = json.loads(answer.body[: int(length)]), answer.body[int(length) :]
    found, offset = {}, 0
    for output in head["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            found[output["name"]] = output["data"]
            continue
        raw, offset = tail[offset : offset + size], offset + size
        if output["datatype"] == "FP32":
            found[output["name"]] = list(struct.unpack(f"<{size // 4}f", raw))
        else:
            items, at = [], 0
            while at < len(raw):
                (n,) = struct.unpack_from("<I", raw, at)
                items.append(raw[at + 4 : at + 4 + n].decode())
                at += 4 + n
            found[output["name"]] = items
    assert offset == len(tail)
    return found


def test_binary_tensor_inputs_are_read_raw_or_base64(photo_bytes) -> None:
    jpeg, png = photo_bytes["rocket"], photo_bytes["chelsea"]
    request, headers = binary_request([jpeg, b64(png).encode()], id="b", parameters={"topk": 2})
    parsed = read(request, headers)
    assert (parsed.protocol, parsed.images, parsed.topk) == (OPEN_INFERENCE, [jpeg, png], 2)
    assert parsed.request_id == "b" and parsed.binary_outputs == frozenset()


def test_outputs_are_answered_binary_when_asked() -> None:
    labels = ["cat", "dog", "crane", "crane"]
    rows = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.6, 0.25, 0.1, 0.05])]
    model = ModelIdentity("m", "2.0")
    # tritonclient without outputs: the whole answer binary
    request, headers = binary_request(
        [b"a", b"b"], parameters={"binary_data_output": True, "topk": 2}
    )
    answer = encode_answer(read(request, headers, classes=4), rows, labels, model)
    assert answer.content_type == "application/octet-stream"
    found = binary_outputs(answer)
    assert found["labels"] == ["crane", "crane", "cat", "dog"]
    assert found["probabilities"] == pytest.approx([0.4, 0.3, 0.6, 0.25])
    # per output: labels in JSON, probabilities binary
    asked = [{"name": "labels", "parameters": {"binary_data": False}}, {"name": "probabilities"}]
    body = v2_body([b"a"], outputs=asked, parameters={"binary_data_output": True, "topk": 1})
    answer = encode_answer(read({"body": body}, classes=4), rows[:1], labels, model)
    assert binary_outputs(answer) == {"labels": ["crane"], "probabilities": [pytest.approx(0.4)]}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r, h: ({"body": r["body"]}, {HEADER: "99999"}), "must be the length of the JSON"),
        (lambda r, h: ({"body": r["body"]}, {HEADER: "①"}), "must be the length of the JSON"),
        (lambda r, h: ({"body": r["body"][:-3]}, h), "binary_data_size is"),
        (lambda r, h: ({"body": r["body"] + b"\x00"}, h), "binary_data_size is"),
    ],
)
def test_broken_binary_requests_are_400_saying_what_is_wrong(change, says) -> None:
    request, headers = change(*binary_request([b"\xff\xd8\xff image"]))
    with pytest.raises(BadInput) as err:
        read(request, headers)
    assert err.value.status == 400 and says in err.value.message


def test_binary_elements_that_do_not_add_up_are_refused() -> None:
    tail = struct.pack("<I", 50) + b"short"
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1],
                 "parameters": {"binary_data_size": len(tail)}}
            ]
        }
    ).encode()  # fmt: skip
    with pytest.raises(BadInput) as err:
        read({"body": head + tail}, {HEADER: str(len(head))})
    assert err.value.kind == "MalformedBinaryData"


def test_broken_json_is_malformed_json_not_an_image() -> None:
    with pytest.raises(BadInput) as err:
        read({"body": b'{"inputs": [{"name": "image",'})
    assert (err.value.status, err.value.kind) == (400, "MalformedJSON")


def test_an_answer_over_its_bound_is_413_and_outputs_are_asked_once() -> None:
    labels = [f"class number {i}" for i in range(1000)]
    rows = [torch.rand(1000) for _ in range(32)]
    v1 = read({"body": {"instances": ["aGk="] * 32, "topk": 1000}})
    answer = encode_answer(v1, rows, labels, ModelIdentity("m", "1"))
    assert bounded(answer, 2_000_000) is answer
    with pytest.raises(BadInput) as err:
        bounded(answer, 900_000)
    assert (err.value.status, err.value.kind) == (413, "AnswerTooLarge")
    assert "max_answer_bytes" in err.value.message
    twice = v2_body([b"x"], outputs=[{"name": "labels"}, {"name": "labels"}])
    with pytest.raises(BadInput, match="asked more than once"):
        read({"body": twice})
