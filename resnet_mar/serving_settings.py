"""How each model is served: the one place that decides workers, threads, batching and limits.

The result is written into the model's own ``model-config.yaml`` inside its archive (TorchServe
reads the top-level keys, the handler reads ``handler:``), so an archive carries everything it
needs, as a Triton model folder does.

Why these defaults (measured on 2 cores with ``make bench``, see README "Benchmark"):
* one worker per model with as many intra-op threads as cores, and the handler's compute gate
  (handlers/compute_gate.py): the models of a server take turns, each batch using all cores, so
  a model asked alone is as fast as if it were served alone, and busy models never run more
  threads than cores. Measured with resnet18 and resnet50 served together, 16 clients each:
  gate, alone 81 and 38 req/s, both busy 26 + 26 req/s (the machine shared, no collapse);
  all threads without the gate, alone 78 and 36, both busy 11 + 5 (the stock collapse);
  the cores split between the models (1 thread each), alone 49 and 14, both busy 48 + 15.
  Two single-thread workers instead of one two-thread worker were measured too: resnet50 served
  at concurrency 1 took 82 ms instead of 37-42 ms (one image cannot use the idle core) and 31
  instead of 39-42 req/s at concurrency 16; resnet18 gained nothing at 16 (89 vs 85-89 req/s);
* batches of up to 8: the handler runs them channels-last, where batch 16 adds no more than 6%
  images/s in process (resnet18; resnet50 none) for twice the time per batch; at 16 clients two
  batches of 8 alternate, so the next one is queued while one runs;
* batches gathered for at most 1 ms: TorchServe always waits the full delay for a second request,
  so a lone request pays it whole; 5 ms cost resnet50 about 5 ms of p50 at concurrency 1
  (42-43 ms vs 37-38 ms) and bought nothing at 16 clients (38-39 vs 39-42 req/s): a loaded
  server fills its batches from the queue without waiting. 1 instead of 2 ms took 0.6-0.9 ms off
  resnet18's p50 at concurrency 1, and its batches at 16 clients stayed full (118 of 120 held 8;
  TorchServe's millisecond clock could close one early, which 0 ms would do every time);
* a bounded queue: past it TorchServe answers 503 at once instead of letting latency grow;
* OpenMP threads that stop spinning soon after a batch: the workers' environment, decided in
  ``resnet_mar/worker_environment.py`` and recorded here in each archive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from resnet_mar.weights import Preprocessing
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

#: Larger batches beyond this add latency without adding throughput on CPU (see above).
BATCH_SIZE = 8
MAX_BATCH_DELAY_MS = 1
#: A 12-megapixel phone photo is fine; a decompression bomb is refused before it is decoded.
MAX_IMAGE_PIXELS = 50_000_000
#: Off by default: then every answer equals the in-process reference (standard preprocessing on
#: the fully decoded image). With 2, a JPEG whose shorter side is at least 2 x 2 x resize_size
#: is decoded at 1/2, 1/4 or 1/8 scale (Pillow draft mode, keeping >= 2 x resize_size): a 12 MP
#: photo decodes in ~25 instead of ~125 ms, but probabilities move (measured: 5e-5 on untrained
#: resnet18, 5e-3 on untrained resnet50 for a 1411 px JPEG; top-5 unchanged in both).
JPEG_DRAFT_FACTOR = 0


@dataclass(frozen=True)
class ServingSettings:
    architecture: str
    model_format: str
    preprocessing: Preprocessing
    intra_op_threads: int
    batch_size: int = BATCH_SIZE
    max_batch_delay_ms: int = MAX_BATCH_DELAY_MS
    workers: int = 1
    response_timeout_s: int = 120
    startup_timeout_s: int = 300
    job_queue_size: int = 256
    topk: int = 5
    max_image_pixels: int = MAX_IMAGE_PIXELS
    jpeg_draft_factor: int = JPEG_DRAFT_FACTOR

    def model_config(self) -> dict[str, Any]:
        """The ``model-config.yaml`` content TorchServe and the handler read."""
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            "jobQueueSize": self.job_queue_size,
            "deviceType": "cpu",
            "handler": {
                "architecture": self.architecture,
                "format": self.model_format,
                "preprocessing": self.preprocessing.as_dict(),
                "intra_op_threads": self.intra_op_threads,
                "topk": self.topk,
                "max_image_pixels": self.max_image_pixels,
                "jpeg_draft_factor": self.jpeg_draft_factor,
                "worker_environment": dict(WORKER_ENVIRONMENT),
            },
        }


def serving_settings(
    architecture: str,
    preprocessing: Preprocessing,
    *,
    model_format: str,
    jpeg_draft_factor: int = JPEG_DRAFT_FACTOR,
    cores: int | None = None,
) -> ServingSettings:
    return ServingSettings(
        architecture=architecture,
        model_format=model_format,
        preprocessing=preprocessing,
        intra_op_threads=cores or os.cpu_count() or 1,
        jpeg_draft_factor=jpeg_draft_factor,
    )
