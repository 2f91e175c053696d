"""The request and answer shapes the handler speaks, recognised from each request's own body.

* ``/predictions/<model>``: one image, raw, multipart, base64 or ``{"data": ...}`` JSON
  (request_payload.py); answered ``{"label": probability, ...}``, errors in TorchServe's shape.
* KServe v1 (``/v1/models/<model>:predict``): ``{"instances": [...], "topk": k}``, each instance
  ``{"data": b64}``, ``{"b64": b64}`` or a bare base64 string; answered
  ``{"predictions": [one /predictions answer per instance]}``.
* Open Inference Protocol, KServe v2 (``/v2/models/<model>/infer``, and the JSON TorchServe's gRPC
  ``Predictions`` carries for KServe's grpc-v2): one BYTES input of shape [n] holding n base64
  images, ``parameters.topk``; answered with outputs ``labels`` (BYTES, [n, k]) and
  ``probabilities`` (FP32, [n, k]), best first, the request's ``id`` echoed.

v1 and v2 errors are ``{"error": "input 1: TruncatedImage: ..."}`` with a 4xx status (what
tritonclient and KServe's clients read), naming the 0-based position of the image at fault.
v1 and v2 answers are compact JSON; a v2 request may send its images and ask its outputs in
Triton's binary tensor form (binary_tensors.py), as tritonclient and KServe's SDK do by default.

TorchServe hands a v1/v2 body over parsed (``Content-Type: application/json``) or as bytes (no
content type, as tritonclient sends it, or gRPC's ``data`` field), so both are recognised here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from resnet_serving.binary_tensors import (
    CONTENT_TYPE,
    HEADER,
    RESPONSE_HEADER,
    binary_answer,
    binary_size,
    bytes_elements,
    serialized_bytes,
    serialized_fp32,
    split_body,
)
from resnet_serving.input_errors import BadInput, bad_request
from resnet_serving.request_options import parse_topk, preview
from resnet_serving.request_payload import OPTION_HEADERS, extract_payload, image_bytes

PREDICTIONS, KSERVE_V1, OPEN_INFERENCE = "predictions", "v1", "v2"
#: The outputs of an Open Inference answer, in the order they are returned.
V2_OUTPUTS = ("labels", "probabilities")


@dataclass(frozen=True)
class ParsedRequest:
    """What one request asks: its images (encoded bytes), how many classes to answer, and how
    the answer must be shaped."""

    protocol: str
    images: list[bytes]
    topk: int
    #: Open Inference only: the request's ``id`` (echoed), the outputs it asked for, and
    #: those of them to answer in binary (binary_tensors.py).
    request_id: str | None = None
    outputs: tuple[str, ...] = V2_OUTPUTS
    binary_outputs: frozenset[str] = frozenset()
    #: An explanation, not a prediction: TorchServe's ``/explanations/<model>`` and v1
    #: ``:explain`` (and v2 ``/explain``) send the header ``explain: True`` (explanations.py).
    explain: bool = False


@dataclass(frozen=True)
class Answer:
    """One request's response: its body and how TorchServe must send it. A dict is written by
    TorchServe (as indented JSON: the stock handler's /predictions shape), a str (compact JSON)
    or bytes (a binary tensor answer) as they are."""

    body: dict[str, Any] | str | bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModelIdentity:
    """What an Open Inference answer names: the served model and its version."""

    name: str
    version: str


def protocol_of(request: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """Which protocol a request speaks: a binary tensor header or a JSON document with
    ``instances`` (v1) or ``inputs`` (v2); anything else is a /predictions body."""
    if HEADER in headers:
        return OPEN_INFERENCE
    for key in ("body", "data"):
        document = _json_document(request.get(key))
        if document is not None and "instances" in document:
            return KSERVE_V1
        if document is not None and "inputs" in document:
            return OPEN_INFERENCE
    return PREDICTIONS


def read_request(
    request: dict[str, Any],
    headers: dict[str, str],
    *,
    default_topk: int,
    num_classes: int,
    max_images: int,
) -> ParsedRequest:
    """One TorchServe request (and its lower-cased headers) -> what it asks, read by its
    protocol: the images, top-k, and whether it is an explanation (TorchServe's ``explain``
    header); raises BadInput."""
    protocol = protocol_of(request, headers)
    header_topk = {name: headers[key] for key, name in OPTION_HEADERS.items() if key in headers}
    if protocol == PREDICTIONS:
        _refuse_broken_json(request)
        payload = extract_payload(request, headers)
        topk = parse_topk(payload.options.get("topk", default_topk), num_classes)
        parsed = ParsedRequest(PREDICTIONS, [payload.image], topk)
    elif protocol == KSERVE_V1:
        document = _first_document(request)
        images = _v1_images(document.get("instances"))
        raw_topk = document.get("topk", header_topk.get("topk", default_topk))
        parsed = ParsedRequest(KSERVE_V1, images, parse_topk(raw_topk, num_classes))
    else:
        document, binary = _v2_document(request, headers)
        parsed = _v2_request(document, binary, header_topk.get("topk", default_topk), num_classes)
    if len(parsed.images) > max_images:
        raise BadInput(
            413,
            "TooManyImages",
            f"{len(parsed.images)} images in one request, over the limit of {max_images}: "
            "split them over several requests (the server batches them anyway)",
        )
    return dataclasses.replace(parsed, explain=headers.get("explain") == "True")


def encode_answer(
    request: ParsedRequest,
    probabilities: list[torch.Tensor],
    labels: list[str],
    model: ModelIdentity,
) -> Answer:
    """The answer to ``request`` from one probability row per image, in its protocol's shape."""
    if request.protocol == PREDICTIONS:
        return Answer(label_scores(probabilities[0], request.topk, labels))
    if request.protocol == KSERVE_V1:
        rows = [label_scores(row, request.topk, labels) for row in probabilities]
        return Answer(compact({"predictions": rows}))
    scores, indices = torch.stack(probabilities).topk(request.topk, dim=1)
    names = [labels[i] for i in indices.flatten().tolist()]
    values = scores.flatten().tolist()
    tensors = {
        "labels": ("BYTES", names, serialized_bytes),
        "probabilities": ("FP32", values, serialized_fp32),
    }
    shape = [len(probabilities), request.topk]
    document: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.request_id is not None:
        document["id"] = request.request_id
    outputs, tails = [], []
    for name in request.outputs:
        datatype, data, serialized = tensors[name]
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in request.binary_outputs:
            tails.append(serialized(data))
            output["parameters"] = {"binary_data_size": len(tails[-1])}
        else:
            output["data"] = data
        outputs.append(output)
    document["outputs"] = outputs
    if not tails:
        return Answer(compact(document))
    body, head_length = binary_answer(document, tails)
    return Answer(body, CONTENT_TYPE, ((RESPONSE_HEADER, str(head_length)),))


def bounded(answer: Answer, limit: int) -> Answer:
    """``answer``, or a 413 when it would be larger than ``limit`` bytes as sent (a dict as
    TorchServe writes it, indented)."""
    body = answer.body
    size = len(json.dumps(body, indent=2) if isinstance(body, dict) else body)
    if size > limit:
        raise BadInput(
            413,
            "AnswerTooLarge",
            f"the answer would be {size} bytes, over the limit of {limit} (max_answer_bytes): "
            "ask a smaller top-k or fewer images a request",
        )
    return answer


def compact(document: dict[str, Any]) -> str:
    """JSON without spaces: what v1/v2 clients get (TorchServe would indent a dict)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def error_answer(protocol: str, error: BadInput) -> Answer:
    """A refusal as sent: /predictions in TorchServe's error shape, v1/v2 compact; one that
    passes (a 503) says when to ask again."""
    body = error_body(protocol, error)
    retry = () if error.retry_after_s is None else (("Retry-After", str(error.retry_after_s)),)
    return Answer(body if protocol == PREDICTIONS else compact(body), headers=retry)


def error_body(protocol: str, error: BadInput) -> dict[str, Any]:
    """A refusal in the protocol's shape, naming the image at fault when there is one."""
    if protocol == PREDICTIONS:
        return error.body()
    where = f"input {error.position}: " if error.position is not None else ""
    return {"error": f"{where}{error.kind}: {error.message}"}


def label_scores(probabilities: torch.Tensor, topk: int, labels: list[str]) -> dict[str, float]:
    """The stock handler's shape, ``{"label": probability}`` best first.

    ImageNet repeats two names ("crane", "maillot"); a repeated label keeps its best score.
    """
    scores, indices = probabilities.topk(topk)
    answer: dict[str, float] = {}
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        answer.setdefault(labels[index], score)
    return answer


def _json_document(value: Any) -> dict[str, Any] | None:
    """A JSON object given parsed or as text/bytes; None for anything that is not one (an image
    never starts with "{")."""
    if isinstance(value, dict):
        return value
    text = _object_text(value)
    if text is None:
        return None
    try:
        found = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def _object_text(value: Any) -> bytes | None:
    """Text or bytes that start like a JSON object, as bytes; None for anything else."""
    if isinstance(value, str):
        value = value.encode("utf-8", errors="replace")
    if isinstance(value, (bytes, bytearray)) and bytes(value).lstrip().startswith(b"{"):
        return bytes(value)
    return None


def _first_document(request: Mapping[str, Any]) -> dict[str, Any]:
    documents = (_json_document(request.get(key)) for key in ("body", "data"))
    found = next((document for document in documents if document is not None), None)
    if found is None:
        raise bad_request("MalformedJSON", "the body is not a JSON object")
    return found


def _refuse_broken_json(request: Mapping[str, Any]) -> None:
    """A body that starts like a JSON object but does not parse is broken JSON, not an image
    (no image format starts with "{")."""
    text = _object_text(request.get("body", request.get("data")))
    if text is None:
        return
    try:
        json.loads(text)
    except (ValueError, RecursionError) as err:
        raise bad_request("MalformedJSON", f"the body is not valid JSON: {str(err)[:80]}") from None


def _v2_document(request: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[dict, bytes]:
    """A v2 request's JSON document and the binary tensor bytes after it (none without the
    binary header)."""
    body = request.get("body", request.get("data"))
    if HEADER not in headers or not isinstance(body, (bytes, bytearray)):
        # (TorchServe parsed a JSON-only body sent as application/json: nothing follows it)
        return _first_document(request), b""
    head, binary = split_body(bytes(body), headers[HEADER])
    document = _json_document(head)
    if document is None or "inputs" not in document:
        raise bad_request(
            "MalformedJSON",
            f"the first {len(head)} bytes of the body ({RESPONSE_HEADER}) must be an inference "
            'request\'s JSON object, with "inputs"',
        )
    return document, binary


def _v1_images(instances: Any) -> list[bytes]:
    if not isinstance(instances, list) or not instances:
        raise bad_request("MalformedJSON", '"instances" must be a non-empty list of images')
    images = []
    for position, instance in enumerate(instances):
        if isinstance(instance, Mapping):
            fields = [key for key in ("data", "b64") if key in instance]
            if not fields:
                raise bad_request(
                    "MalformedJSON",
                    'an instance object needs its base64 image under "data" or "b64"',
                ).at(position)
            instance = instance[fields[0]]
        if not isinstance(instance, str):
            raise bad_request(
                "MalformedJSON",
                f"the image must be base64 text, not a JSON {type(instance).__name__}",
            ).at(position)
        images.append(_decoded(instance, position))
    return images


def _v2_request(
    document: dict[str, Any], binary: bytes, header_topk: Any, num_classes: int
) -> ParsedRequest:
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], Mapping):
        raise bad_request(
            "MalformedJSON",
            '"inputs" must hold exactly one input: the images, as a BYTES tensor of base64 '
            "strings with shape [n]",
        )
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise bad_request(
            "MalformedJSON",
            f"the input's datatype must be BYTES (base64 images), not "
            f"{preview(str(tensor.get('datatype')))}",
        )
    shape = tensor.get("shape")
    size = binary_size(tensor)
    if size is None:
        data = tensor.get("data")
        if isinstance(data, list) and all(isinstance(row, list) for row in data):
            data = [item for row in data for item in row]  # nested rows, as OIP allows
        if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
            raise bad_request("MalformedJSON", "the input's data must be a list of base64 strings")
    else:
        if size != len(binary):
            raise bad_request(
                "MalformedBinaryData",
                f"the input's binary_data_size is {size} but {len(binary)} bytes follow the JSON",
            )
        data = bytes_elements(binary)
    if not _shape_holds(shape, len(data)):
        raise bad_request(
            "MalformedJSON",
            f"the input's shape {str(shape)[:40]} does not describe the {len(data)} images "
            "in its data: use [n] (or [n, 1]) with n the number of images",
        )
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise bad_request("MalformedJSON", '"parameters" must be an object')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("MalformedJSON", '"id" must be a string')
    outputs, binary_outputs = _requested_outputs(
        document.get("outputs"), parameters.get("binary_data_output") is True
    )
    return ParsedRequest(
        protocol=OPEN_INFERENCE,
        images=[_decoded(item, position) for position, item in enumerate(data)],
        topk=parse_topk(parameters.get("topk", header_topk), num_classes),
        request_id=request_id,
        outputs=outputs,
        binary_outputs=binary_outputs,
    )


def _shape_holds(shape: Any, count: int) -> bool:
    if not isinstance(shape, list) or not shape or len(shape) > 2:
        return False
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return False
    return shape[0] == count and math.prod(shape) == count


def _requested_outputs(
    outputs: Any, binary_by_default: bool
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs asked for (all when the request names none), and which of them to answer in
    binary: those asked with ``binary_data``, else as the request's ``binary_data_output``."""
    if outputs is None:
        return V2_OUTPUTS, frozenset(V2_OUTPUTS if binary_by_default else ())
    if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
        raise bad_request("MalformedJSON", '"outputs" must be a list of {"name": ...} objects')
    names, binary = [], set()
    for output in outputs:
        name = output.get("name")
        if name in names:
            raise bad_request("MalformedJSON", f"output {name!r} is asked more than once")
        if name not in V2_OUTPUTS:
            raise bad_request(
                "MalformedJSON",
                f"unknown output {preview(str(name))}; this model answers {list(V2_OUTPUTS)}",
            )
        parameters = output.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise bad_request("MalformedJSON", "an output's parameters must be an object")
        if parameters.get("binary_data", binary_by_default) is True:
            binary.add(name)
        names.append(name)
    if not names:
        return V2_OUTPUTS, frozenset(V2_OUTPUTS if binary_by_default else ())
    return tuple(names), frozenset(binary)


def _decoded(item: str | bytes, position: int) -> bytes:
    """A base64 string of JSON data, or a binary element (raw image bytes, or base64 text)."""
    try:
        return image_bytes(item)
    except BadInput as err:
        raise err.at(position) from None
