"""The in-process side of a run, measured while no server runs: the ceiling any serving setup
can reach here (the very file a setup serves, loaded in this process as our handler loads it but
with all cores, fed preprocessed photos: no server, no decoding), the same file on one thread,
what that ceiling leaves out (the CPU exact preprocessing costs per photo), and what the cores
can compute against what one image asks of them (FP32 matmul peak, GFLOP per image).
"""

from __future__ import annotations

import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
import yaml
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from resnet_handler import decode_image, model_input
from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.progress import progress
from resnet_mar.bench.results import InProcessLimit, MatmulPeak
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

#: 4096 x 4096 float32: large enough that the product is compute-bound on every core (three
#: matrices of 64 MiB, about 137 GFLOP a call), small enough to take about a second here.
PEAK_SIZE = 4096
#: Timed calls after one warm-up call; the peak is the fastest.
PEAK_CALLS = 5

Forward = Callable[[torch.Tensor], torch.Tensor]


def preprocessed_photos(payloads: list[bytes]) -> torch.Tensor:
    """The photos as the model sees them (torchvision's ImageNet transform), stacked."""
    transform = reference_transforms(STANDARD_IMAGENET)
    return torch.stack([transform(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads])


def load_in_process(model_file: Path, model_format: str, threads: int) -> Forward:
    """The served file, loaded as our handler loads it, on ``threads`` threads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        model = load_model(str(model_file), model_format, threads)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return forward


def img_per_s(
    forward: Forward,
    photos: torch.Tensor,
    size: int,
    layout: torch.memory_format,
    min_time_s: float,
) -> tuple[float, list[float]]:
    """Images per second of batches of ``size`` photos in ``layout``, and the seconds of each
    forward pass, over at least ``min_time_s`` and 3 calls after two unmeasured ones
    (TorchScript profiles, then optimises, each new input)."""
    batch = photos[torch.arange(size) % len(photos)].contiguous(memory_format=layout)
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
    """Images per second at each batch size and input layout (inference only, preprocessed
    photos); the best of them is the limit. Also the median batch-1 latency of each layout, the
    other load on the machine meanwhile, and the same file on one thread at the limit's batch
    and layout: the limit over cores x that is how well one worker's threads scale, the figure
    that says whether more workers with fewer threads each would pay on a machine with more
    cores."""
    before = cpu_counters()
    threads = os.cpu_count() or 1
    forward = load_in_process(model_file, model_format, threads)
    layouts = LAYOUTS.get(model_format, DEFAULT_LAYOUTS)
    speeds: dict[str, dict[int, float]] = {layout: {} for layout in layouts}
    batch1_ms: dict[str, float] = {}
    for size in BATCH_SIZES:
        for layout, memory_format in layouts.items():
            speed, times = img_per_s(forward, photos, size, memory_format, min_time_s)
            speeds[layout][size] = speed
            if size == 1:
                batch1_ms[layout] = round(statistics.median(times) * 1000, 2)
        measured = ", ".join(f"{layout} {speeds[layout][size]:.1f}" for layout in layouts)
        progress(f"  {model_file.name} batch {size:2d}: img/s {measured}")
    other = other_load(before, cpu_counters())
    layout, batch = max(
        ((layout, size) for layout in layouts for size in speeds[layout]),
        key=lambda key: speeds[key[0]][key[1]],
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
    """Images per second of the file at the limit's best ``batch`` and ``layout``, on ``threads``
    threads (None: every core). Measured again after the served measurements, it shows how far
    this machine's speed drifted (other tenants of the host) while the server was measured
    against the limit. torch's thread count is put back afterwards (the loader sets it)."""
    previous = torch.get_num_threads()
    try:
        forward = load_in_process(model_file, model_format, threads or os.cpu_count() or 1)
        memory_format = LAYOUTS.get(model_format, DEFAULT_LAYOUTS)[layout]
        return img_per_s(forward, photos, batch, memory_format, min_time_s)[0]
    finally:
        torch.set_num_threads(previous)


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


def fp32_matmul_peak(*, size: int = PEAK_SIZE, calls: int = PEAK_CALLS) -> MatmulPeak:
    """GFLOP/s of ``torch.mm`` of two ``size`` x ``size`` float32 matrices on every core (2 size^3
    operations a call), the best of ``calls`` calls after a warm-up: the most FP32 arithmetic
    this machine's BLAS gets from its cores, the yardstick of every FP32 limit. torch's thread
    count is put back afterwards."""
    threads = os.cpu_count() or 1
    before = cpu_counters()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up: pages touched, BLAS threads started
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    gflop_per_s = 2 * size**3 / min(seconds) / 1e9
    return MatmulPeak(
        round(gflop_per_s, 1), size, threads, calls, other_load(before, cpu_counters())
    )


def gflop_per_image(architecture: str, crop: torch.Tensor) -> float:
    """GFLOP one image (``crop``: [3, H, W], as the model sees it) asks of the architecture, a
    multiply-add counting 2, counted by ``torch.utils.flop_counter`` on torchvision's eager
    model: the convolutions and the classifier, the arithmetic that matters (normalisations,
    activations and pooling are not counted). The same for every format of the model: a
    serialized file changes how the operations run, not how many a ResNet needs (batch norm
    folded into the convolutions adds none)."""
    model = torchvision.models.get_model(architecture, weights=None).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(crop[None])
    return round(counter.get_total_flops() / 1e9, 3)
