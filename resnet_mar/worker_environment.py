"""The environment TorchServe's Python workers are tuned for: ``python -m
resnet_mar.worker_environment`` prints it as ``NAME=value`` words for ``env`` (``make serve``).

It has to be set where TorchServe starts, and every worker inherits it: OpenMP reads it when
torch loads, before a handler is imported, and TorchServe 0.12 has no config.properties key that
passes an environment to its workers. Each archive records it too (``handler.worker_environment``
in model-config.yaml), and its handler warns when the server was started without it.

Why ``GOMP_SPINCOUNT=3000``: torch's GNU OpenMP keeps its idle threads spinning for several ms
after each parallel region, on the cores the next batch's JPEG decoding needs
(docs/benchmark/settings.md has the measurements).

This module imports nothing, so that ``make serve`` reads it in well under a second.
"""

WORKER_ENVIRONMENT = {"GOMP_SPINCOUNT": "3000"}


def assignments() -> str:
    """``NAME=value`` words, as ``env`` takes them."""
    return " ".join(f"{name}={value}" for name, value in WORKER_ENVIRONMENT.items())


if __name__ == "__main__":
    print(assignments())
