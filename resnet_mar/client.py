"""A small client for served models: what ``curl -T`` does, from Python, in each protocol the
handler speaks (``/predictions``, KServe v1, the Open Inference Protocol), with the image read
from a file: a request body built on a shell's command line fails above about 96 KB."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import requests

PROTOCOLS = ("predictions", "v1", "v2")


class ClientError(RuntimeError):
    """The server refused the request or could not be reached; says what it answered."""


def predict(
    url: str,
    model: str,
    image: Path,
    *,
    topk: int | None = None,
    protocol: str = "predictions",
    timeout_s: float = 60,
) -> dict[str, Any]:
    """The served answer for one image file, as JSON. ``/predictions`` gets the raw bytes with
    top-k as the ``X-TopK`` header (TorchServe drops a query string before the handler); v1 and
    v2 get the image base64-encoded in their JSON bodies, top-k in the body."""
    data = Path(image).read_bytes()
    encoded = base64.b64encode(data).decode("ascii")
    options = {"topk": topk} if topk else {}
    if protocol == "predictions":
        call = {
            "method": "PUT",
            "url": f"{url}/predictions/{model}",
            "data": data,
            "headers": {"X-TopK": str(topk)} if topk else {},
        }
    elif protocol == "v1":
        body = {"instances": [{"b64": encoded}], **options}
        call = {"method": "POST", "url": f"{url}/v1/models/{model}:predict", "json": body}
    elif protocol == "v2":
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}
        body = {"inputs": [tensor], "parameters": options}
        call = {"method": "POST", "url": f"{url}/v2/models/{model}/infer", "json": body}
    else:
        raise ClientError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    try:
        response = requests.request(timeout=timeout_s, **call)
    except requests.RequestException as err:
        raise ClientError(f"cannot reach {url}: {err}") from None
    if response.status_code != 200:
        raise ClientError(f"{response.status_code} from {model}: {_one_line(response.text)}")
    return response.json()


def _one_line(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return " ".join(text.split())
