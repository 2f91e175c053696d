"""A small client for served models: what ``curl -T`` does, from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


def predict(
    url: str, model: str, image: Path, *, topk: int | None = None, timeout_s: float = 60
) -> dict[str, Any]:
    """PUT the file's bytes to ``/predictions/<model>``; the JSON answer, or raise with its body."""
    params = {"topk": topk} if topk else None
    response = requests.put(
        f"{url}/predictions/{model}",
        data=Path(image).read_bytes(),
        params=params,
        timeout=timeout_s,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} from {model}: {response.text.strip()}")
    return response.json()
