"""Figures without a target that explain the headline, derived from a run's results: printed
at the end of the run and listed under the report's headline.

Each note is one small function of the results, so a new derived figure is one more function in
:func:`notes`; a note whose figures the run did not measure is left out. The arithmetic the
report's tables share with the notes (and a target with them) is here too, written once.
"""

from __future__ import annotations

from resnet_mar.bench.results import InProcessLimit, MatmulPeak, ModelResults, Results
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, V2, ours


def attainable_img_per_s(limit_img_per_s: float, preprocessing_ms: float, cores: int) -> float:
    """The most images per second the limit's cores can classify when each image also costs
    ``preprocessing_ms`` of CPU: the time per image of both, with that CPU spread over the cores."""
    return 1 / (1 / limit_img_per_s + preprocessing_ms / 1000 / cores)


def preprocessing_share(preprocessing_ms: float, limit_img_per_s: float, cores: int) -> float:
    """The share of an image's CPU that exact preprocessing takes, against inference at the
    limit's speed (cores / limit seconds of CPU per image): where it nears or passes one half,
    decoding, not the model, decides how fast a server can go."""
    inference_ms = cores / limit_img_per_s * 1000
    return preprocessing_ms / (preprocessing_ms + inference_ms)


def share_of_peak(limit_img_per_s: float, gflop_per_image: float, peak_gflop_per_s: float) -> float:
    """The limit's arithmetic (images per second x GFLOP per image) over the FP32 matmul peak."""
    return limit_img_per_s * gflop_per_image / peak_gflop_per_s


def thread_scaling(limit: InProcessLimit) -> float | None:
    """The limit over threads x its one-thread figure: 1 when every thread adds a whole core's
    worth (None: the one-thread figure was not measured)."""
    if limit.one_thread_img_per_s is None:
        return None
    return limit.limit_img_per_s / (limit.threads * limit.one_thread_img_per_s)


def _served_rps(model: ModelResults, fmt: str) -> float | None:
    point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    return point.load.throughput_rps if point else None


def nchw_only(name: str, model: ModelResults) -> list[str]:
    """Served throughput against an NCHW-only limit: what a plain ``torch.jit.load`` loop
    reaches (the limit itself takes the best input layout)."""
    served = _served_rps(model, "torchscript")
    limit = model.in_process.get("torchscript")
    if served is None or limit is None or "contiguous" not in limit.img_per_s:
        return []
    nchw = max(limit.img_per_s["contiguous"].values())
    return [
        f"{name}: served c{HEADLINE_CONCURRENCY} / NCHW-only in-process limit ({nchw:.1f} img/s) = "
        f"{served / nchw:.2f}"
    ]


def with_preprocessing(
    name: str, model: ModelResults, fmt: str, limit: InProcessLimit
) -> list[str]:
    """The limit with exact preprocessing on the same cores: what a server with no cost of its
    own could reach, and served throughput against it."""
    served = _served_rps(model, fmt)
    if served is None or model.preprocessing_ms is None:
        return []
    cap = attainable_img_per_s(limit.limit_img_per_s, model.preprocessing_ms, limit.threads)
    return [
        f"{name}: {fmt} limit with exact preprocessing on the same cores = "
        f"{cap:.1f} img/s ({cap / limit.limit_img_per_s:.2f} of the limit); "
        f"served c{HEADLINE_CONCURRENCY} / it = {served / cap:.2f}"
    ]


def measured_again(name: str, model: ModelResults, fmt: str, limit: InProcessLimit) -> list[str]:
    """The limit after the served measurements: how far the machine's speed moved meanwhile."""
    served = _served_rps(model, fmt)
    after = limit.limit_after_img_per_s
    if served is None or after is None:
        return []
    return [
        f"{name}: {fmt} limit measured again after serving: {after:.1f} img/s "
        f"({after / limit.limit_img_per_s:.0%} of the first); "
        f"served c{HEADLINE_CONCURRENCY} / it = {served / after:.2f}"
    ]


def of_peak(
    name: str, model: ModelResults, fmt: str, limit: InProcessLimit, peak: MatmulPeak | None
) -> list[str]:
    """The limit's arithmetic as a share of the machine's FP32 matmul peak."""
    if peak is None or model.gflop_per_image is None:
        return []
    gflop_per_s = limit.limit_img_per_s * model.gflop_per_image
    share = share_of_peak(limit.limit_img_per_s, model.gflop_per_image, peak.gflop_per_s)
    why = " (int8 arithmetic is not bounded by the FP32 peak)" if fmt == "int8" else ""
    return [
        f"{name}: {fmt} limit {limit.limit_img_per_s:.1f} img/s x {model.gflop_per_image:.2f} "
        f"GFLOP = {gflop_per_s:.0f} GFLOP/s, {share:.2f} of the FP32 matmul peak{why}"
    ]


def scaling(name: str, fmt: str, limit: InProcessLimit) -> list[str]:
    """The limit on one thread against all of them."""
    one = limit.one_thread_img_per_s
    efficiency = thread_scaling(limit)
    if one is None or efficiency is None:
        return []
    return [
        f"{name}: {fmt} limit on one thread {one:.1f} img/s, on {limit.threads} threads "
        f"{limit.limit_img_per_s:.1f} (batch {limit.best_batch}, {limit.best_layout}): "
        f"thread scaling {efficiency:.2f}"
    ]


def preprocessing_at_int8(name: str, model: ModelResults) -> list[str]:
    """What exact preprocessing weighs once inference runs at int8 speed."""
    limit = model.in_process.get("int8")
    if limit is None or model.preprocessing_ms is None:
        return []
    share = preprocessing_share(model.preprocessing_ms, limit.limit_img_per_s, limit.threads)
    inference_ms = limit.threads / limit.limit_img_per_s * 1000
    return [
        f"{name}: at int8 speed exact preprocessing is {share:.0%} of the CPU per image "
        f"({model.preprocessing_ms:.2f} ms per photo, int8 inference {inference_ms:.2f} ms = "
        "cores / limit)"
    ]


def v2_against_predictions(name: str, model: ModelResults) -> list[str]:
    """The Open Inference Protocol against /predictions, same archive and clients."""
    v2 = model.point(V2, HEADLINE_CONCURRENCY)
    predictions = model.point(ours("torchscript"), HEADLINE_CONCURRENCY)
    if v2 is None or predictions is None or not predictions.load.throughput_rps:
        return []  # nothing to compare with (no answer at all is in the served table)
    ratio = v2.load.throughput_rps / predictions.load.throughput_rps
    lat, base = v2.load.latency_ms, predictions.load.latency_ms
    return [
        f"{name}: v2 /infer / /predictions at c{HEADLINE_CONCURRENCY} (TorchScript) = {ratio:.2f} "
        f"({v2.load.throughput_rps:.1f} vs {predictions.load.throughput_rps:.1f} req/s; p50 "
        f"{lat.p50:.0f} vs {base.p50:.0f} ms, p99 {lat.p99:.0f} vs {base.p99:.0f} ms; "
        f"{v2.load.errors} errors)"
    ]


def jpeg_ratio(name: str, model: ModelResults) -> list[str]:
    served = model.served.get(ours("torchscript"))
    if served is None or served.jpeg_size is None:
        return []
    ratio = served.jpeg_size.p50_ratio_large_over_small
    return [f"{name}: p50 at c1 of a 12 MP JPEG / a 0.3 MP JPEG = {ratio:.2f}"]


def fp32_peak(results: Results) -> list[str]:
    peak = results.fp32_peak
    if peak is None:
        return []
    return [
        f"FP32 matmul peak: {peak.gflop_per_s:.1f} GFLOP/s ({peak.size} x {peak.size} float32 "
        f"torch.mm on {peak.threads} threads, best of {peak.calls} calls)"
    ]


def all_busy(results: Results) -> list[str]:
    found = []
    for label, busy in results.all_busy.items():
        rates = " + ".join(f"{name} {m.load.throughput_rps:.1f}" for name, m in busy.models.items())
        found.append(
            f"{label}, all models busy at once ({busy.concurrency_per_model} clients each): "
            f"{rates} req/s; shares of their alone throughput add up to {busy.shares_sum:.2f}"
        )
    return found


def load_generator(results: Results) -> list[str]:
    """How much CPU the load generator itself took from the server, at most."""
    busiest = max(
        (
            p.load.client_cpu_s / p.load.window_s
            for model in results.models.values()
            for served in model.served.values()
            for p in served.points
        ),
        default=0.0,
    )
    return [f"load generator CPU: at most {busiest:.1%} of one core during a window"]


def notes(results: Results) -> list[str]:
    """Every note, model by model (and within a model, format by format), then the run's."""
    found = []
    for name, model in results.models.items():
        found += nchw_only(name, model)
        for fmt, limit in model.in_process.items():
            found += with_preprocessing(name, model, fmt, limit)
            found += measured_again(name, model, fmt, limit)
            found += of_peak(name, model, fmt, limit, results.fp32_peak)
            found += scaling(name, fmt, limit)
        found += preprocessing_at_int8(name, model)
        found += v2_against_predictions(name, model)
        found += jpeg_ratio(name, model)
    return found + fp32_peak(results) + all_busy(results) + load_generator(results)


def busiest_other(results: Results) -> float:
    """The most cores other processes used during any one measurement of the run."""
    others = [
        *([results.fp32_peak.other] if results.fp32_peak else []),
        *(limit.other for model in results.models.values() for limit in model.in_process.values()),
        *(
            p.other
            for model in results.models.values()
            for served in model.served.values()
            for p in served.points
        ),
        *(busy.other for busy in results.all_busy.values()),
    ]
    return max((other.other_cores for other in others), default=0.0)
