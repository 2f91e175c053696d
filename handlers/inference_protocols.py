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
from input_errors import BadInput, bad_request
from request_options import parse_topk, preview
from request_payload import OPTION_HEADERS, extract_payload, image_bytes

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
    #: Open Inference only: the request's ``id`` (echoed) and the outputs it asked for.
    request_id: str | None = None
    outputs: tuple[str, ...] = V2_OUTPUTS
    #: An explanation, not a prediction: TorchServe's ``/explanations/<model>`` and v1
    #: ``:explain`` (and v2 ``/explain``) send the header ``explain: True`` (explanations.py).
    explain: bool = False


@dataclass(frozen=True)
class ModelIdentity:
    """What an Open Inference answer names: the served model and its version."""

    name: str
    version: str


def protocol_of(request: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Which protocol a request speaks, and its JSON document for v1 and v2."""
    for key in ("body", "data"):
        document = _json_document(request.get(key))
        if document is not None and "instances" in document:
            return KSERVE_V1, document
        if document is not None and "inputs" in document:
            return OPEN_INFERENCE, document
    return PREDICTIONS, None


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
    protocol, document = protocol_of(request)
    header_topk = {name: headers[key] for key, name in OPTION_HEADERS.items() if key in headers}
    if protocol == PREDICTIONS:
        payload = extract_payload(request, headers)
        topk = parse_topk(payload.options.get("topk", default_topk), num_classes)
        parsed = ParsedRequest(PREDICTIONS, [payload.image], topk)
    elif protocol == KSERVE_V1:
        assert document is not None
        images = _v1_images(document.get("instances"))
        raw_topk = document.get("topk", header_topk.get("topk", default_topk))
        parsed = ParsedRequest(KSERVE_V1, images, parse_topk(raw_topk, num_classes))
    else:
        assert document is not None
        parsed = _v2_request(document, header_topk.get("topk", default_topk), num_classes)
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
) -> dict[str, Any]:
    """The answer to ``request`` from one probability row per image, in its protocol's shape."""
    if request.protocol == PREDICTIONS:
        return label_scores(probabilities[0], request.topk, labels)
    if request.protocol == KSERVE_V1:
        return {"predictions": [label_scores(row, request.topk, labels) for row in probabilities]}
    scores, indices = torch.stack(probabilities).topk(request.topk, dim=1)
    tensors = {
        "labels": ("BYTES", [labels[i] for i in indices.flatten().tolist()]),
        "probabilities": ("FP32", scores.flatten().tolist()),
    }
    shape = [len(probabilities), request.topk]
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.request_id is not None:
        answer["id"] = request.request_id
    answer["outputs"] = [
        {"name": name, "datatype": tensors[name][0], "shape": shape, "data": tensors[name][1]}
        for name in request.outputs
    ]
    return answer


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
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).lstrip()
        if not text.startswith(b"{"):
            return None
        try:
            found = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return found if isinstance(found, dict) else None
    if isinstance(value, str) and value.lstrip().startswith("{"):
        return _json_document(value.encode("utf-8", errors="replace"))
    return None


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


def _v2_request(document: dict[str, Any], header_topk: Any, num_classes: int) -> ParsedRequest:
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
    data, shape = tensor.get("data"), tensor.get("shape")
    if isinstance(data, list) and all(isinstance(row, list) for row in data):
        data = [item for row in data for item in row]  # nested rows, as OIP allows
    if not isinstance(data, list) or not data or not all(isinstance(x, str) for x in data):
        raise bad_request("MalformedJSON", "the input's data must be a list of base64 strings")
    if not _shape_holds(shape, len(data)):
        raise bad_request(
            "MalformedJSON",
            f"the input's shape {str(shape)[:40]} does not describe the {len(data)} strings "
            "in its data: use [n] (or [n, 1]) with n the number of images",
        )
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise bad_request("MalformedJSON", '"parameters" must be an object')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("MalformedJSON", '"id" must be a string')
    return ParsedRequest(
        protocol=OPEN_INFERENCE,
        images=[_decoded(item, position) for position, item in enumerate(data)],
        topk=parse_topk(parameters.get("topk", header_topk), num_classes),
        request_id=request_id,
        outputs=_requested_outputs(document.get("outputs")),
    )


def _shape_holds(shape: Any, count: int) -> bool:
    if not isinstance(shape, list) or not shape or len(shape) > 2:
        return False
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return False
    return shape[0] == count and math.prod(shape) == count


def _requested_outputs(outputs: Any) -> tuple[str, ...]:
    """The outputs asked for (all when the request names none); only JSON data is served."""
    if outputs is None:
        return V2_OUTPUTS
    if not isinstance(outputs, list) or not all(isinstance(o, Mapping) for o in outputs):
        raise bad_request("MalformedJSON", '"outputs" must be a list of {"name": ...} objects')
    names = []
    for output in outputs:
        name = output.get("name")
        if name not in V2_OUTPUTS:
            raise bad_request(
                "MalformedJSON",
                f"unknown output {preview(str(name))}; this model answers {list(V2_OUTPUTS)}",
            )
        if (output.get("parameters") or {}).get("binary_data") is True:
            raise bad_request(
                "MalformedJSON",
                "binary tensor data is not served: ask for the outputs with binary_data false",
            )
        names.append(name)
    return tuple(names) or V2_OUTPUTS


def _decoded(text: str, position: int) -> bytes:
    try:
        return image_bytes(text)
    except BadInput as err:
        raise err.at(position) from None
