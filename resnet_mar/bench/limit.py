"""The in-process limit: the very file a setup serves, loaded in this process as our handler
loads it but with all cores, fed preprocessed photos, no server and no decoding; the ceiling
any serving setup can reach on this machine. The same file on one thread, for how the limit
scales with cores. Also what that limit leaves out: the CPU the handler's exact preprocessing
costs per photo."""

from __future__ import annotations

import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from PIL import Image

from resnet_handler import decode_image, model_input
from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.progress import progress
from resnet_mar.bench.results import InProcessLimit
from resnet_mar.export import JIT_DEPRECATION
from resnet_mar.weights import STANDARD_IMAGENET, reference_transforms
from resnet_serving.inference_protocols import read_request
from resnet_serving.model_runtimes import load_model
from resnet_serving.serving_schema import ModelConfig

BATCH_SIZES = (1, 2, 4, 8, 16)

#: Input layouts the in-process limit tries: the handler feeds TorchScript channels-last batches
#: from 3 images up (faster there), so a limit measured in NCHW alone would not be a limit.
LAYOUTS = {
    "torchscript": {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last},
}
DEFAULT_LAYOUTS = {"contiguous": torch.contiguous_format}

Forward = Callable[[torch.Tensor], torch.Tensor]


def preprocessed_photos(payloads: list[bytes]) -> torch.Tensor:
    """The photos as the model sees them (torchvision's ImageNet transform), stacked."""
    transform = reference_transforms(STANDARD_IMAGENET)
    return torch.stack([transform(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads])


def batch_of(photos: torch.Tensor, size: int) -> torch.Tensor:
    return photos[torch.arange(size) % len(photos)].contiguous()


def load_in_process(model_file: Path, model_format: str, threads: int | None = None) -> Forward:
    """The served file, loaded as our handler loads it, on ``threads`` threads (None: every core
    of this machine)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        model = load_model(str(model_file), model_format, threads or os.cpu_count() or 1)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return forward


def call_times(
    forward: Forward, batch: torch.Tensor, *, min_time_s: float, min_calls: int
) -> list[float]:
    """Seconds per forward pass over at least ``min_time_s`` and ``min_calls`` calls, after
    two unmeasured ones (TorchScript profiles, then optimises, each new input)."""
    for _ in range(2):
        forward(batch)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_time_s:
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return times


def in_process_limit(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    *,
    min_time_s: float = 1.0,
    min_calls: int = 3,
) -> InProcessLimit:
    """Images per second at each batch size and input layout (inference only, preprocessed
    photos); the best of them is the limit. Also the median batch-1 latency of each layout, and
    the other load on the machine meanwhile."""
    before = cpu_counters()
    forward = load_in_process(model_file, model_format)
    layouts = LAYOUTS.get(model_format, DEFAULT_LAYOUTS)
    img_per_s: dict[str, dict[int, float]] = {layout: {} for layout in layouts}
    batch1_ms: dict[str, float] = {}
    for size in BATCH_SIZES:
        for layout, memory_format in layouts.items():
            batch = batch_of(photos, size).contiguous(memory_format=memory_format)
            times = call_times(forward, batch, min_time_s=min_time_s, min_calls=min_calls)
            img_per_s[layout][size] = round(size * len(times) / sum(times), 2)
            if size == 1:
                batch1_ms[layout] = round(statistics.median(times) * 1000, 2)
        measured = ", ".join(f"{layout} {img_per_s[layout][size]:.1f}" for layout in layouts)
        progress(f"  {model_file.name} batch {size:2d}: img/s {measured}")
    best_layout, best_batch = max(
        ((layout, size) for layout in layouts for size in img_per_s[layout]),
        key=lambda key: img_per_s[key[0]][key[1]],
    )
    return InProcessLimit(
        file=model_file.name,
        threads=os.cpu_count() or 1,
        img_per_s=img_per_s,
        batch1_ms=batch1_ms,
        limit_img_per_s=img_per_s[best_layout][best_batch],
        best_batch=best_batch,
        best_layout=best_layout,
        batch1_latency_ms=min(batch1_ms.values()),
        other=other_load(before, cpu_counters()),
    )


def at_best_batch(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    limit: InProcessLimit,
    *,
    threads: int | None = None,
    min_time_s: float = 2.0,
) -> float:
    """Images per second of the file at the limit's best batch and layout, on ``threads``
    threads (None: every core)."""
    forward = load_in_process(model_file, model_format, threads)
    memory_format = LAYOUTS.get(model_format, DEFAULT_LAYOUTS)[limit.best_layout]
    batch = batch_of(photos, limit.best_batch).contiguous(memory_format=memory_format)
    times = call_times(forward, batch, min_time_s=min_time_s, min_calls=3)
    return round(limit.best_batch * len(times) / sum(times), 2)


def limit_again(
    model_file: Path, model_format: str, photos: torch.Tensor, limit: InProcessLimit
) -> float:
    """The limit re-measured at its best batch and layout, after the served measurements: this
    machine's speed drifts (other tenants of the host), so the report shows by how much the
    reference moved while the server was measured against it."""
    return at_best_batch(model_file, model_format, photos, limit)


def one_thread_limit(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    limit: InProcessLimit,
    *,
    min_time_s: float = 2.0,
) -> float:
    """The file on one thread at the limit's best batch and layout: the limit over
    cores x this is how well one worker's threads scale, the figure that says whether more
    workers with fewer threads each would pay on a machine with more cores. torch's thread
    count is put back afterwards (the loader sets it)."""
    threads = torch.get_num_threads()
    try:
        return at_best_batch(
            model_file, model_format, photos, limit, threads=1, min_time_s=min_time_s
        )
    finally:
        torch.set_num_threads(threads)


def preprocessing_cost(
    model_config: Path, payloads: list[bytes], *, min_time_s: float = 2.0
) -> float:
    """Milliseconds of CPU per image for what the handler does before the model, exactly as
    served: read the request, decode, resize and crop (``decode_image``), then normalise
    (``model_input``), in batches of 8. The in-process limit leaves this out, yet a server
    spends it on the same cores. Measured on one torch thread, so that no idle OpenMP thread's
    spinning is counted."""
    settings = ModelConfig.from_dict(yaml.safe_load(model_config.read_text())).handler
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bodies = [payloads[i % len(payloads)] for i in range(8)]
    try:
        images = 0
        began = time.process_time()
        while images < 16 or time.process_time() - began < min_time_s:
            crops = [
                decode_image(image, settings)
                for body in bodies
                for image in read_request(
                    {"body": body}, {}, default_topk=1, num_classes=1, max_images=1
                ).images
            ]
            model_input(crops, settings)
            images += len(crops)
        return round((time.process_time() - began) / images * 1000, 3)
    finally:
        torch.set_num_threads(threads)
