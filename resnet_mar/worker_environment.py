"""The environment TorchServe's Python workers are tuned for: ``python -m
resnet_mar.worker_environment`` prints it as ``NAME=value`` words for ``env`` (``make serve``).

It has to be set where TorchServe starts, and every worker inherits it: OpenMP reads it when
torch loads, before a handler is imported, and TorchServe 0.12 has no config.properties key that
passes an environment to its workers. Each archive records it too (``handler.worker_environment``
in model-config.yaml), and its handler warns when the server was started without it.

Why ``GOMP_SPINCOUNT=3000``: torch's GNU OpenMP keeps its idle threads spinning for about 300,000
rounds (several ms) after each parallel region, so the next batch's JPEG decoding shared a core
with a spinning thread. With 3000: 8 photos decoded in 9.3 instead of 13.3-15.2 ms right after a
forward pass, the forward pass itself unchanged (resnet18 batch 8: 122-124 vs 123-127 img/s in
process; resnet50: 52 vs 49 img/s); served at 16 clients, resnet18 98 and 86 req/s vs 85 and 79
without, resnet50 44 and 42 vs 43 and 37 (two runs each, alternated).

This module imports nothing, so that ``make serve`` reads it in well under a second.
"""

WORKER_ENVIRONMENT = {"GOMP_SPINCOUNT": "3000"}


def assignments() -> str:
    """``NAME=value`` words, as ``env`` takes them."""
    return " ".join(f"{name}={value}" for name, value in WORKER_ENVIRONMENT.items())


if __name__ == "__main__":
    print(assignments())
