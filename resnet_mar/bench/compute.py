"""What the machine's cores can compute, and what one image asks of them: the FP32 matmul peak
and each architecture's GFLOP per image.

A limit in images per second says little on its own (is 130 img/s good on this CPU?); times the
model's GFLOP per image, over the peak, it is the share of the hardware's FP32 arithmetic the
served file uses, which says how much any FP32 runtime could still gain here. The peak is
measured in the run itself, right before the limits: the machine's speed drifts (its cores are
shared with other tenants of the host), so a peak from another day would not be comparable.
"""

from __future__ import annotations

import os
import time

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.results import MatmulPeak

#: 4096 x 4096 float32: large enough that the product is compute-bound on every core (three
#: matrices of 64 MiB, about 137 GFLOP a call), small enough to take about a second here.
PEAK_SIZE = 4096
#: Timed calls after one warm-up call; the peak is the fastest.
PEAK_CALLS = 5


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
