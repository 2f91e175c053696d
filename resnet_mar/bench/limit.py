"""The in-process side, measured while no server runs: the ceiling any serving setup can reach
here (the very file it serves, loaded as our handler loads it, fed preprocessed photos), the same
on one thread, what the ceiling leaves out (exact preprocessing's CPU per photo), and what the
cores can compute (FP32 matmul peak) against what an image asks (GFLOP).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from resnet_handler import decode_image, model_input
from resnet_mar.bench import progress
from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.results import InProcessLimit, MatmulPeak
from resnet_mar.export import JIT_DEPRECATION
from resnet_mar.weights import STANDARD_IMAGENET, reference_transforms
from resnet_serving.inference_protocols import read_request
from resnet_serving.model_runtimes import load_model
from resnet_serving.serving_schema import ModelConfig

BATCH_SIZES = (1, 2, 4, 8, 16)
#: The handler feeds TorchScript channels-last batches from 3 images up (faster there), so a
#: TorchScript limit measured in NCHW alone would not be a limit.
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
#: 4096 x 4096 float32: compute-bound on every core, about a second here.
PEAK_SIZE = 4096
PEAK_CALLS = 5

Forward = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def preprocessed_photos(payloads: list[bytes]) -> torch.Tensor:
    """The photos as the model sees them (torchvision's ImageNet transform), stacked."""
    transform = reference_transforms(STANDARD_IMAGENET)
    return torch.stack([transform(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads])


def load_in_process(model_file: Path, model_format: str, threads: int) -> Forward:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        model = load_model(str(model_file), model_format, threads)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return forward


def img_per_s(
    forward: Forward, photos: torch.Tensor, size: int, layout: str, min_time_s: float
) -> tuple[float, list[float]]:
    """Images per second of batches of ``size``, and each call's seconds, over at least
    ``min_time_s`` and 3 calls after two unmeasured ones (TorchScript optimises each new input)."""
    batch = photos[torch.arange(size) % len(photos)].contiguous(memory_format=LAYOUTS[layout])
    for _ in range(2):
        forward(batch)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < min_time_s:
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return round(size * len(times) / sum(times), 2), times


def in_process_limit(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    *,
    min_time_s: float = 1.0,
    one_thread_s: float = 2.0,
) -> InProcessLimit:
    """The best images per second over every batch size and input layout on all cores. Its
    figure on one thread says whether more workers with fewer threads each would pay on a
    machine with more cores."""
    before, threads = cpu_counters(), os.cpu_count() or 1
    forward = load_in_process(model_file, model_format, threads)
    layouts = list(LAYOUTS) if model_format == "torchscript" else ["contiguous"]
    speeds: dict[str, dict[int, float]] = {layout: {} for layout in layouts}
    batch1_ms = {}
    for size in BATCH_SIZES:
        for layout in layouts:
            speeds[layout][size], times = img_per_s(forward, photos, size, layout, min_time_s)
            if size == 1:
                batch1_ms[layout] = round(statistics.median(times) * 1000, 2)
        measured = ", ".join(f"{layout} {speeds[layout][size]:.1f}" for layout in layouts)
        progress(f"  {model_file.name} batch {size:2d}: img/s {measured}")
    other = other_load(before, cpu_counters())
    layout, batch = max(
        ((lay, b) for lay in layouts for b in BATCH_SIZES), key=lambda k: speeds[k[0]][k[1]]
    )
    one = at_best_batch(model_file, model_format, photos, batch, layout, 1, one_thread_s)
    progress(f"  {model_file.name} batch {batch}, {layout}, one thread: img/s {one:.1f}")
    return InProcessLimit(
        file=model_file.name,
        threads=threads,
        img_per_s=speeds,
        batch1_ms=batch1_ms,
        limit_img_per_s=speeds[layout][batch],
        best_batch=batch,
        best_layout=layout,
        batch1_latency_ms=min(batch1_ms.values()),
        one_thread_img_per_s=one,
        other=other,
    )


def at_best_batch(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    batch: int,
    layout: str,
    threads: int | None = None,
    min_time_s: float = 2.0,
) -> float:
    """Images per second at the limit's batch and layout on ``threads`` (None: every core).
    Measured again after serving, it shows how far the machine's speed drifted meanwhile."""
    threads = threads or os.cpu_count() or 1
    with torch_threads(threads):
        forward = load_in_process(model_file, model_format, threads)
        return img_per_s(forward, photos, batch, layout, min_time_s)[0]


def preprocessing_cost(
    model_config: Path, payloads: list[bytes], *, min_time_s: float = 2.0
) -> float:
    """Milliseconds of CPU per image for what the handler does before the model, exactly as
    served, in batches of 8: the limit leaves it out, yet a server spends it on the same cores.
    On one torch thread, so that no idle OpenMP thread's spinning counts."""
    settings = ModelConfig.from_dict(yaml.safe_load(model_config.read_text())).handler
    bodies = [payloads[i % len(payloads)] for i in range(8)]
    images, began = 0, time.process_time()
    with torch_threads(1):
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


def fp32_matmul_peak(*, size: int = PEAK_SIZE, calls: int = PEAK_CALLS) -> MatmulPeak:
    """GFLOP/s of ``torch.mm`` on every core (2 size^3 operations a call), the best of ``calls``
    after a warm-up: the yardstick of every FP32 limit."""
    threads, before = os.cpu_count() or 1, cpu_counters()
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    out = torch.empty(size, size)
    seconds = []
    with torch_threads(threads):
        for _ in range(calls + 1):  # the first warms up: pages touched, BLAS threads started
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
    gflop_per_s = round(2 * size**3 / min(seconds[1:]) / 1e9, 1)
    return MatmulPeak(gflop_per_s, size, threads, calls, other_load(before, cpu_counters()))


def gflop_per_image(architecture: str, crop: torch.Tensor) -> float:
    """GFLOP of one crop ([3, H, W]) through torchvision's eager model, a multiply-add counting 2:
    convolutions and classifier, the same for every format (a serialized file changes how the
    operations run, not how many a ResNet needs)."""
    model = torchvision.models.get_model(architecture, weights=None).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(crop[None])
    return round(counter.get_total_flops() / 1e9, 3)
