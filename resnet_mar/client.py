"""A small client for served models: what ``curl -T`` does, from Python, in each protocol the
handler speaks (``/predictions``, KServe v1, the Open Inference Protocol), with the image read
from a file: a request body built on a shell's command line fails above about 96 KB."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import requests

PROTOCOLS = ("predictions", "v1", "v2")
#: The protocols that answer explanations (the Open Inference Protocol defines none).
EXPLANATION_PROTOCOLS = ("predictions", "v1")


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
    return _answered(call, url, model, timeout_s)


def explain(
    url: str,
    model: str,
    image: Path,
    *,
    protocol: str = "predictions",
    timeout_s: float = 300,
    patience_s: float = 120,
) -> dict[str, Any]:
    """The served explanation of one image file (``/explanations`` or v1 ``:explain``), as the
    explanation object. Waits its turn: a 503 with Retry-After is asked again after that long,
    for up to ``patience_s`` (a worker explains one image at a time)."""
    data = Path(image).read_bytes()
    if protocol == "predictions":
        call = {"method": "PUT", "url": f"{url}/explanations/{model}", "data": data}
    elif protocol == "v1":
        body = {"instances": [{"b64": base64.b64encode(data).decode("ascii")}]}
        call = {"method": "POST", "url": f"{url}/v1/models/{model}:explain", "json": body}
    else:
        raise ClientError(
            f"explanations are asked with {' or '.join(EXPLANATION_PROTOCOLS)}, not {protocol!r}"
        )
    answer = _answered(call, url, model, timeout_s, patience_s)
    return answer["explanations"][0] if protocol == "v1" else answer


def _answered(
    call: dict[str, Any], url: str, model: str, timeout_s: float, patience_s: float = 0
) -> Any:
    """The JSON answer to ``call``, asked again after a 503's Retry-After for up to
    ``patience_s``; a ClientError saying what the server answered otherwise."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            response = requests.request(timeout=timeout_s, **call)
        except requests.RequestException as err:
            raise ClientError(f"cannot reach {url}: {err}") from None
        wait = float(response.headers.get("Retry-After", 1))
        if response.status_code != 503 or time.monotonic() + wait > deadline:
            break
        time.sleep(wait)
    if response.status_code != 200:
        raise ClientError(f"{response.status_code} from {model}: {_one_line(response.text)}")
    return response.json()


def _one_line(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return " ".join(text.split())
