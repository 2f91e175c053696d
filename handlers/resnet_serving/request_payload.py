"""Find the image bytes and the options in what TorchServe hands the handler for one request.

TorchServe turns a request into a dict: a raw body (``curl -T``, ``--data-binary`` with a
Content-Type) arrives as ``body`` (bytes), multipart fields under their own names, a JSON body
already parsed, and a form-urlencoded body (curl's default for ``--data-binary``) split into
fields. Images may also come as base64 text, bare or as a ``data:`` URI.

Options (``topk``) come from a multipart field, a JSON field or an ``X-TopK`` header: TorchServe
drops the query string of ``/predictions/...`` before the handler sees it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from resnet_serving.input_errors import BadInput, bad_request
from resnet_serving.request_options import preview

#: Where an image may be: the raw body first, then the usual multipart field names.
IMAGE_FIELDS = ("body", "data", "image", "file")
OPTION_FIELDS = ("topk",)
OPTION_HEADERS = {"x-topk": "topk"}
FORM_URLENCODED = "application/x-www-form-urlencoded"
_BASE64_TEXT = re.compile(rb"^(data:[\w/+.-]+;base64,)?[A-Za-z0-9+/=_\-\s]+$")


@dataclass(frozen=True)
class Payload:
    image: bytes
    options: dict[str, Any]


def extract_payload(request: dict[str, Any], headers: dict[str, str]) -> Payload:
    """Split one TorchServe request into image bytes and raw (unvalidated) options.

    ``headers``: the request's HTTP headers, names in lower case.
    """
    options = {name: headers[key] for key, name in OPTION_HEADERS.items() if key in headers}
    options.update({key: request[key] for key in OPTION_FIELDS if key in request})
    candidates = [key for key in request if key not in OPTION_FIELDS]
    if headers.get("content-type", "").startswith(FORM_URLENCODED):
        return Payload(image=_form_body(request, candidates), options=options)
    named = [key for key in IMAGE_FIELDS if key in request]
    if named:
        value = request[named[0]]
    elif len(candidates) == 1:
        value = request[candidates[0]]
    elif not candidates and headers.get("content-type", "").startswith("multipart/"):
        raise bad_request(
            "MalformedMultipart",
            "the multipart body has no field that could be read: check its boundary and "
            "framing (curl -F data=@photo.jpg builds one)",
        )
    elif not candidates:
        raise bad_request("EmptyBody", "the request has no body: send an image")
    else:
        raise bad_request(
            "MalformedMultipart",
            f"cannot tell which multipart field holds the image among {field_names(candidates)}; "
            f"name it one of {list(IMAGE_FIELDS[1:])}",
        )
    if isinstance(value, dict):
        options.update({key: value[key] for key in OPTION_FIELDS if key in value})
        json_fields = [key for key in IMAGE_FIELDS[1:] if key in value]
        if not json_fields:
            raise bad_request(
                "MalformedJSON",
                f"a JSON body needs the base64 image under one of {list(IMAGE_FIELDS[1:])}",
            )
        value = value[json_fields[0]]
    return Payload(image=image_bytes(value), options=options)


def field_names(names: list[str], limit: int = 10) -> str:
    """Field names for a message or a log line, at most ``limit`` of them, each cut short: a
    body of 20,000 fields must not become a 189 KB answer."""
    shown = ", ".join(preview(str(name), 40) for name in sorted(names)[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"[{shown}{more}]"


def _form_body(request: dict[str, Any], fields: list[str]) -> bytes:
    """Undo TorchServe's form parsing of a urlencoded body, which only base64 text survives:
    the text up to its first '=' became a field name ('+' read as ' '), the rest its value."""
    if len(fields) == 1:
        value = request[fields[0]]
        value = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
        text = fields[0].replace(" ", "+") + ("=" + value if value else "")
        # (names are URL-decoded text, any character may be there; base64 is ASCII)
        if text.isascii() and _looks_like_base64(text.encode("ascii")):
            return _decode_base64(text.encode("ascii"))
    raise BadInput(
        415,
        "UnsupportedMediaType",
        f"a {FORM_URLENCODED} body cannot carry a binary image: send it with curl -T, or with "
        "--data-binary and -H 'Content-Type: application/octet-stream' (or image/jpeg, ...)",
    )


def image_bytes(value: Any) -> bytes:
    """Raw bytes as they are; base64 text (str, or bytes that are all base64) decoded."""
    if isinstance(value, str):
        value = value.encode("utf-8", errors="replace")
        return _decode_base64(value) if value.strip() else b""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value)
        if not _looks_like_base64(value):
            return value
        try:
            return _decode_base64(value)
        except BadInput as err:  # only a guess: plain text is "not an image", not bad base64
            raise bad_request(
                "NotAnImage",
                f"the body ({len(value)} bytes) is text, neither an image nor base64 of one "
                f"({err.message})",
            ) from None
    raise bad_request(
        "MalformedJSON", f"the image must be base64 text, not a JSON {type(value).__name__}"
    )


def _looks_like_base64(data: bytes) -> bool:
    # Binary image formats all carry non-alphabet bytes in their first few bytes.
    return len(data.strip()) >= 8 and _BASE64_TEXT.match(data) is not None


def _decode_base64(text: bytes) -> bytes:
    text = re.sub(rb"\s+", b"", text)
    if text.startswith(b"data:"):
        header, _, text = text.partition(b",")
        if not header.endswith(b";base64"):
            raise bad_request("MalformedBase64", "a data: URI must be base64-encoded")
    if b"-" in text or b"_" in text:
        text = text.replace(b"-", b"+").replace(b"_", b"/")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request("MalformedBase64", f"the body is not valid base64: {err}") from None
