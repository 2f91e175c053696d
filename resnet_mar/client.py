"""A small client for served models: what ``curl -T`` does, from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


def predict(
    url: str, model: str, image: Path, *, topk: int | None = None, timeout_s: float = 60
) -> dict[str, Any]:
    """PUT the file's bytes to ``/predictions/<model>``; the JSON answer, or raise with its body.
    Top-k travels as the ``X-TopK`` header: TorchServe drops a query string before the handler."""
    headers = {"X-TopK": str(topk)} if topk else {}
    response = requests.put(
        f"{url}/predictions/{model}",
        data=Path(image).read_bytes(),
        headers=headers,
        timeout=timeout_s,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} from {model}: {response.text.strip()}")
    return response.json()
