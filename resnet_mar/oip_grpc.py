"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``), served by the
front door (front_door.py) beside its HTTP door.

TorchServe 0.12's own gRPC service for the protocol is named differently
(``org.pytorch.serve.grpc.openinference``), so the protocol's clients cannot call it, and it drops
``parameters`` and ``raw_input_contents`` and answers a refused image with OK
(docs/open-inference.md). This service answers health and metadata as the HTTP door does, and
turns each ``ModelInfer`` into one binary-tensor HTTP request to TorchServe's inference socket,
so the handler batches it with every other request and answers it alone: its images in the
handler's outputs (``raw_output_contents``, as Triton answers), a refusal as a gRPC error status
carrying the handler's message.
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from grpc_tools import protoc

from resnet_mar.front_door import ModelRegistry, UnixHTTP

PROTO = Path(__file__).with_name("protos") / "open_inference.proto"
#: HTTP statuses the handler answers, as the gRPC codes the protocol's clients expect.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _compiled() -> tuple[Any, Any]:
    """The proto's message and service modules, compiled once per process (grpcio-tools)."""
    out = tempfile.mkdtemp(prefix="resnet_mar_proto_")
    status = protoc.main(
        ["protoc", f"-I{PROTO.parent}", f"--python_out={out}", f"--grpc_python_out={out}",
         str(PROTO)]
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"protoc could not compile {PROTO}")
    sys.path.insert(0, out)
    import open_inference_pb2
    import open_inference_pb2_grpc

    return open_inference_pb2, open_inference_pb2_grpc


pb2, pb2_grpc = _compiled()


def parameter_value(parameter: Any) -> Any:
    """An InferParameter's value, whichever of its kinds is set."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def http_request(request: Any) -> tuple[str, bytes, dict[str, str]]:
    """A ModelInfer request -> the binary-tensor HTTP request the handler reads: path, body and
    headers. BYTES elements go as they are (``raw_input_contents`` are already 4-byte
    length-prefixed; ``bytes_contents`` are prefixed here)."""
    inputs, tails = [], []
    for position, tensor in enumerate(request.inputs):
        if position < len(request.raw_input_contents):
            tail = request.raw_input_contents[position]
        else:
            elements = list(tensor.contents.bytes_contents)
            tail = b"".join(struct.pack("<I", len(e)) + e for e in elements)
        tails.append(tail)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": {"binary_data_size": len(tail)},
            }
        )
    parameters = {k: parameter_value(v) for k, v in request.parameters.items()}
    parameters["binary_data_output"] = True
    document: dict[str, Any] = {"inputs": inputs, "parameters": parameters}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": output.name} for output in request.outputs]
    head = json.dumps(document).encode()
    model, version = request.model_name, request.model_version
    path = f"/predictions/{model}/{version}" if version else f"/v2/models/{model}/infer"
    return path, head + b"".join(tails), {"inference-header-content-length": str(len(head))}


def infer_response(body: bytes, head_length: int) -> Any:
    """The handler's binary answer -> a ModelInferResponse (outputs in raw_output_contents)."""
    document = json.loads(body[:head_length])
    tail, offset = body[head_length:], 0
    response = pb2.ModelInferResponse(
        model_name=document.get("model_name", ""),
        model_version=document.get("model_version", ""),
        id=document.get("id", ""),
    )
    for output in document.get("outputs", []):
        size = output["parameters"]["binary_data_size"]
        response.outputs.add(
            name=output["name"], datatype=output["datatype"], shape=output["shape"]
        )
        response.raw_output_contents.append(tail[offset : offset + size])
        offset += size
    return response


def error_message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")[:500]
    if isinstance(document, dict):
        return str(document.get("error") or document.get("message") or document)
    return str(document)


class OpenInferenceService(pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, upstream: UnixHTTP, registry: ModelRegistry) -> None:
        self.upstream = upstream
        self.registry = registry

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb2.ServerReadyResponse(ready=await self.registry.server_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb2.ServerMetadataResponse(**self.registry.server_metadata())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = await self.registry.model_ready(request.name, request.version or None)
        if ready is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} is not served")
        return pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        found = await self.registry.metadata(request.name, request.version or None)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} is not served")
        tensor = pb2.ModelMetadataResponse.TensorMetadata
        return pb2.ModelMetadataResponse(
            name=found["name"],
            versions=found["versions"],
            platform=found["platform"],
            inputs=[tensor(**t) for t in found["inputs"]],
            outputs=[tensor(**t) for t in found["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        path, body, headers = http_request(request)
        reply = await self.upstream.request("POST", path, body, headers)
        if reply.status != 200:
            code = STATUS_CODES.get(reply.status, grpc.StatusCode.INTERNAL)
            await context.abort(code, error_message(reply.body))
        length = reply.headers.get("inference-header-content-length")
        if length is None:
            await context.abort(grpc.StatusCode.INTERNAL, "the model answered without tensors")
        return infer_response(reply.body, int(length))


def grpc_server(address: str, upstream: UnixHTTP, registry: ModelRegistry) -> grpc.aio.Server:
    """The service on ``address`` (host:port), not started. Messages up to TorchServe's own
    request limit (8 MiB in config.properties) pass; the handler refuses what it must."""
    limit = 16 * 1024 * 1024
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 0)]  # a taken port is an error, never a shared one
    )  # fmt: skip
    pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        OpenInferenceService(upstream, registry), server
    )
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address} for gRPC")
    return server
