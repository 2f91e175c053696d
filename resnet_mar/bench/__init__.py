"""``make bench``: how close the served model gets to the machine's limit, and to the stock setup.

For each model (untrained weights: speed does not depend on them) one run measures, side by side:
the in-process limit (the very file the server serves, in this process on all cores and on one,
fed preprocessed photos: no server, no decoding), the FP32 matmul peak and GFLOP per image, the
CPU exact preprocessing costs per photo; then, from TorchServe, our archive in each format, the
stock setup (the same ``.pt`` behind ``image_classifier`` with TorchServe's defaults), our
TorchScript archive over the Open Inference Protocol, all models busy at once, a 12-megapixel JPEG
against a 0.3-megapixel one, and each limit again after its format was served.

One server runs at a time; the load comes from ``load_client`` (closed loop, real JPEG photos,
loopback only). Outputs: ``report.md``, ``bench.json`` (every raw number) and ``bench.png``. The
process exits 0 when a target is missed (this is a report); it fails only when the run breaks.
docs/benchmark/overview.md says what each module does and what the last run found.
"""

import time

_STARTED = time.monotonic()


def elapsed_s() -> float:
    return time.monotonic() - _STARTED


def progress(message: str) -> None:
    """One line per step, stamped with the run's time so far: a stalled step shows where."""
    elapsed = int(elapsed_s())
    print(f"[bench {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)
