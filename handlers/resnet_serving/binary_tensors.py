"""Triton's binary tensor data extension of the Open Inference Protocol over HTTP, both ways.

tritonclient (``InferInput.set_data_from_numpy``, ``InferRequestedOutput``) and KServe's SDK
send and ask tensors in binary by default. A request then carries its JSON document followed by
the raw tensor bytes; the header ``Inference-Header-Content-Length`` says where the JSON ends,
and each input's ``parameters.binary_data_size`` how many of the bytes after it are its own, in
the order of ``inputs``. A BYTES tensor is its elements one after the other, each a 4-byte
little-endian length then its bytes (here: an image file, raw, or base64 text of one).

An answer is binary for the outputs asked with ``parameters.binary_data`` (or, for those that
do not say, the request's ``parameters.binary_data_output``): such an output carries
``parameters.binary_data_size`` instead of ``data``, its bytes follow the JSON in the order of
``outputs``, and the response's ``Inference-Header-Content-Length`` header gives the JSON's
length.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from resnet_serving.input_errors import bad_request

#: The request and response header (lower case: the handler's headers are).
HEADER = "inference-header-content-length"
RESPONSE_HEADER = "Inference-Header-Content-Length"
#: A binary answer's content type (its head is JSON, its tail is not).
CONTENT_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """A binary request's body -> its JSON text and the tensor bytes after it."""
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or int(text) > len(body):
        raise bad_request(
            "MalformedBinaryData",
            f"the {RESPONSE_HEADER} header must be the length of the JSON at the start of the "
            f"body ({len(body)} bytes), got {text[:20]!r}",
        )
    return body[: int(text)], body[int(text) :]


def binary_size(tensor: dict) -> int | None:
    """An input's ``parameters.binary_data_size``, or None when its data is in the JSON."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad_request(
            "MalformedBinaryData", f"binary_data_size must be a byte count, got {size!r}"
        )
    return size


def bytes_elements(data: bytes) -> list[bytes]:
    """A BYTES tensor's elements from its binary form; refuses any other layout."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            break
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            break
        elements.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise bad_request(
            "MalformedBinaryData",
            f"the input's {len(data)} binary bytes are not BYTES elements, each a 4-byte "
            "little-endian length then its bytes",
        )
    return elements


def serialized_bytes(elements: Sequence[str]) -> bytes:
    """A BYTES output in binary form: each element's UTF-8 length-prefixed."""
    encoded = [element.encode("utf-8") for element in elements]
    return b"".join(_LENGTH.pack(len(e)) + e for e in encoded)


def serialized_fp32(values: Sequence[float]) -> bytes:
    """An FP32 output in binary form: little-endian IEEE floats."""
    return struct.pack(f"<{len(values)}f", *values)


def binary_answer(document: dict, tails: Sequence[bytes]) -> tuple[bytes, int]:
    """The answer's compact JSON followed by the binary outputs' bytes, and the JSON's length
    (the response's ``Inference-Header-Content-Length``)."""
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return head + b"".join(tails), len(head)
