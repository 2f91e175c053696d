"""How each model is served: the one place that decides workers, threads, batching and limits.

The result is written into the model's own ``model-config.yaml`` inside its archive (TorchServe
reads the top-level keys, the handler reads ``handler:``), so an archive carries everything it
needs, as a Triton model folder does.

Why these defaults (measured on 2 cores with ``make bench``, see README "Benchmark"):
* one worker per model, and intra-op threads = cores / models served together: workers x threads
  never exceed the cores, which is what made the stock set-up collapse under concurrent load.
  Two single-thread workers instead of one two-thread worker were measured too: resnet50 served
  at concurrency 1 took 82 ms instead of 37-42 ms (one image cannot use the idle core) and 31
  instead of 39-42 req/s at concurrency 16; resnet18 gained nothing at 16 (89 vs 85-89 req/s);
* batches of up to 8: the handler runs them channels-last, where batch 16 adds no more than 6%
  images/s in process (resnet18; resnet50 none) for twice the time per batch; at 16 clients two
  batches of 8 alternate, so the next one is queued while one runs;
* batches gathered for at most 2 ms: TorchServe always waits the full delay for a second request,
  so a lone request pays it whole; 5 ms cost resnet50 about 5 ms of p50 at concurrency 1
  (42-43 ms vs 37-38 ms) and bought nothing at 16 clients (38-39 vs 39-42 req/s): a loaded
  server fills its batches from the queue without waiting. Below 2 ms TorchServe's millisecond
  clock can close a batch before the queued requests are taken;
* a bounded queue: past it TorchServe answers 503 at once instead of letting latency grow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from resnet_mar.weights import Preprocessing

#: Larger batches beyond this add latency without adding throughput on CPU (see above).
BATCH_SIZE = 8
MAX_BATCH_DELAY_MS = 2
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
            },
        }


def threads_per_model(models_served_together: int, cores: int | None = None) -> int:
    """Split the cores between the models of one server so that they never oversubscribe."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, models_served_together))


def serving_settings(
    architecture: str,
    preprocessing: Preprocessing,
    *,
    model_format: str,
    models_served_together: int,
    jpeg_draft_factor: int = JPEG_DRAFT_FACTOR,
    cores: int | None = None,
) -> ServingSettings:
    return ServingSettings(
        architecture=architecture,
        model_format=model_format,
        preprocessing=preprocessing,
        intra_op_threads=threads_per_model(models_served_together, cores),
        jpeg_draft_factor=jpeg_draft_factor,
    )
