"""Crafted benchmark runs for the bench tests: every figure a target, note or report section
reads, with round numbers so that each derived figure can be worked out by hand.

:func:`model` passes every target of every format: limits of 100 img/s (int8: 250), batch-1
latency 10 ms, preprocessing 2 ms of CPU per photo on 2 threads (so int8's limit with exact
preprocessing is 1 / (1/250 + 0.002/2) = 200 img/s), one-thread limits of 50 img/s (int8:
125), i.e. a thread scaling of 1.0, and 2 GFLOP per image against :func:`run`'s FP32 peak of
400 GFLOP/s (0.5 of it at 100 img/s, 1.25 at int8's 250). Over v2, 81 req/s against
/predictions' 90 at 16 clients.
"""

from __future__ import annotations

from resnet_mar.bench.load_client import Latency, LoadPoint
from resnet_mar.bench.results import (
    InProcessLimit,
    Machine,
    MatmulPeak,
    ModelResults,
    OtherLoad,
    Results,
    ServedModel,
    ServedPoint,
    Settings,
)
from resnet_mar.bench.setups import UNTRAINED_INT8_GATE

IDLE = OtherLoad(0.0, 0.0)
CONCURRENCIES = (1, 4, 16, 64)
EVERY_FORMAT = ("torchscript", "onnx", "openvino", "int8")


def load(concurrency: int, rps: float, p50_ms: float = 50.0, errors: int = 0) -> LoadPoint:
    """A point whose latency percentiles are all ``p50_ms``."""
    return LoadPoint(
        concurrency=concurrency,
        window_s=10.0,
        warmup_s=2.0,
        requests=round(rps * 10),
        throughput_rps=rps,
        latency_ms=Latency(p50_ms, p50_ms, p50_ms, p50_ms),
        errors=errors,
        error_kinds={"HTTP 503": errors} if errors else {},
        client_cpu_s=0.01,
    )


def served(rps: float, c1_p50_ms: float = 15.0, errors_at_64: int = 0) -> ServedModel:
    """A sweep at the run's concurrencies: ``rps`` from 4 clients on."""
    points = [
        load(1, rps / 2, p50_ms=c1_p50_ms),
        load(4, rps),
        load(16, rps),
        load(64, rps, errors=errors_at_64),
    ]
    return ServedModel(20.0, tuple(ServedPoint(p, IDLE) for p in points))


def limit(img_per_s: float, one_thread: float, batch1_ms: float = 10.0) -> InProcessLimit:
    """A 2-thread limit at batch 8 (NCHW), its one-thread figure ``one_thread``."""
    return InProcessLimit(
        file="m.pt",
        threads=2,
        img_per_s={"contiguous": {1: img_per_s / 2, 8: img_per_s}},
        batch1_ms={"contiguous": batch1_ms},
        limit_img_per_s=img_per_s,
        best_batch=8,
        best_layout="contiguous",
        batch1_latency_ms=batch1_ms,
        one_thread_img_per_s=one_thread,
        other=IDLE,
    )


def model(
    ts_rps: float = 90.0,
    onnx_rps: float = 150.0,
    stock_rps: float = 20.0,
    c1_p50_ms: float = 15.0,
    openvino_rps: float = 90.0,
    int8_rps: float = 215.0,
    v2_rps: float = 81.0,
) -> ModelResults:
    """Every figure a target needs, in every format, passing them all."""
    return ModelResults(
        in_process={
            "torchscript": limit(100.0, one_thread=50.0),
            "onnx": limit(100.0, one_thread=50.0),
            "openvino": limit(100.0, one_thread=50.0),
            "int8": limit(250.0, one_thread=125.0),
        },
        served={
            "ours-torchscript": served(ts_rps, c1_p50_ms),
            "ours-torchscript-v2": ServedModel(
                20.0, (ServedPoint(load(16, v2_rps, p50_ms=200.0), IDLE),)
            ),
            "stock": served(stock_rps),
            "ours-onnx": served(onnx_rps, c1_p50_ms),
            "ours-openvino": served(openvino_rps, c1_p50_ms),
            "ours-int8": served(int8_rps, c1_p50_ms),
        },
        preprocessing_ms=2.0,
        gflop_per_image=2.0,
    )


def run(
    models: dict[str, ModelResults], formats: tuple[str, ...] = ("torchscript", "onnx")
) -> Results:
    """A run of ``models`` serving ``formats``; its FP32 peak 400 GFLOP/s."""
    return Results(
        started="2026-11-22 00:00:00 UTC",
        machine=Machine("cpu", 2, 23.5, "Linux"),
        versions={"torch": "2.14.0"},
        load_start=[0.0, 0.0, 0.0],
        settings=Settings(
            formats,
            CONCURRENCIES,
            10.0,
            2.0,
            UNTRAINED_INT8_GATE if "int8" in formats else None,
        ),
        models=models,
        fp32_peak=MatmulPeak(400.0, 4096, 2, 5, OtherLoad(0.03, 0.0)),
    )
