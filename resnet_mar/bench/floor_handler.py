"""The benchmark's empty handler: what TorchServe itself costs per answer, with nothing to compute.

The benchmark packs this file into an archive of its own (``archives.archive_floor``) and serves it
exactly as ours are: the project's config.properties, our model-config.yaml's workers and batching,
the doors in front. Each batch sleeps about as long as a small model's batch takes, so that the
frontend sees full batches as it does at 16 clients, then every request gets a few fixed bytes.
The CPU profile of that point is the floor every handler pays on top of its model work: the Java
frontend, TorchServe's Python worker protocol, the doors and the load generator.

TorchServe imports it inside its worker, without this package: the standard library only.
"""

from __future__ import annotations

import time
from typing import Any

#: About a batch of 8 of resnet18 on two cores: batches fill as they do for a model.
BATCH_SLEEP_S = 0.02
ANSWER = b'{"floor": 1.0}'


def handle(data: list[Any] | None, context: Any) -> list[bytes] | None:
    """One fixed answer per request, after one batch time; ``None`` is TorchServe's load call."""
    if data is None:
        return None
    time.sleep(BATCH_SLEEP_S)
    return [ANSWER] * len(data)
