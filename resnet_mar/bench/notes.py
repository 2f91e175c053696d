"""Figures without a target that explain the headline, derived from a run's results: printed
at the end of the run and listed under the report's headline.

Each note is one small function of the results, so a new derived figure (say, each limit as a
fraction of the machine's matmul peak) is one more function in :func:`notes`.
"""

from __future__ import annotations

from resnet_mar.bench.results import InProcessLimit, ModelResults, Results
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, ours


def attainable_img_per_s(limit_img_per_s: float, preprocessing_ms: float, cores: int) -> float:
    """The most images per second the limit's cores can classify when each image also costs
    ``preprocessing_ms`` of CPU: the time per image of both, with that CPU spread over the cores."""
    return 1 / (1 / limit_img_per_s + preprocessing_ms / 1000 / cores)


def _served_rps(model: ModelResults, fmt: str) -> float | None:
    served = model.served.get(ours(fmt))
    point = served.at(HEADLINE_CONCURRENCY) if served else None
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


def jpeg_ratio(name: str, model: ModelResults) -> list[str]:
    served = model.served.get(ours("torchscript"))
    if served is None or served.jpeg_size is None:
        return []
    ratio = served.jpeg_size.p50_ratio_large_over_small
    return [f"{name}: p50 at c1 of a 12 MP JPEG / a 0.3 MP JPEG = {ratio:.2f}"]


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
        found += jpeg_ratio(name, model)
    return found + all_busy(results) + load_generator(results)


def busiest_other(results: Results) -> float:
    """The most cores other processes used during any one measurement of the run."""
    return max(
        (
            other.other_cores
            for model in results.models.values()
            for other in [
                *(limit.other for limit in model.in_process.values()),
                *(p.other for served in model.served.values() for p in served.points),
                *(busy.other for busy in results.all_busy.values()),
            ]
        ),
        default=0.0,
    )
