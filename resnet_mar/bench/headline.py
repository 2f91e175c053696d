"""The headline: the project's targets, as data, checked against a run's results; and the notes
under it, figures without a target that explain it. Both head the report and end the run.

A :class:`Target` names its check, the figure it measures, a threshold with its direction, and
the formats it applies to; it is checked on every model. Each applicable (model, format) gives
one row, and a figure the run did not measure gives a FAIL row that says so: a broken
measurement must not look like a target that needs no checking. A format the run did not serve
gives no rows. A note whose figures the run did not measure is left out.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from resnet_mar.bench.results import HeadlineRow, InProcessLimit, ModelResults, Results
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, STOCK, V2, ours

NOT_MEASURED = "not measured"

_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


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


def thread_scaling(limit: InProcessLimit) -> float:
    """The limit over threads x its one-thread figure: 1 when every thread adds a whole core's
    worth."""
    return limit.limit_img_per_s / (limit.threads * limit.one_thread_img_per_s)


def served_rps(model: ModelResults, label: str) -> float | None:
    """The setup's throughput at the headline concurrency (None: not measured)."""
    point = model.point(label, HEADLINE_CONCURRENCY)
    return point.load.throughput_rps if point else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """None (not measured) when either side was not measured, or when the denominator's setup
    gave no answer in its window: a ratio against nothing measures nothing, and a run that ends
    this way must still write its report (its served table shows the errors)."""
    return None if numerator is None or not denominator else numerator / denominator


def limit_rps(model: ModelResults, fmt: str) -> float | None:
    """The in-process limit of the model's file in ``fmt`` (None: not measured)."""
    limit = model.in_process.get(fmt)
    return limit.limit_img_per_s if limit else None


def served_over_limit(results: Results, name: str, fmt: str) -> float | None:
    """Throughput served at the headline concurrency over the in-process limit of that file."""
    model = results.models[name]
    return ratio(served_rps(model, ours(fmt)), limit_rps(model, fmt))


def c1_overhead_ms(results: Results, name: str, fmt: str) -> float | None:
    """What serving adds to one image: p50 at one client minus the in-process batch-1 latency."""
    model = results.models[name]
    point = model.point(ours(fmt), 1)
    limit = model.in_process.get(fmt)
    if point is None or limit is None:
        return None
    return point.load.latency_ms.p50 - limit.batch1_latency_ms


def errors(results: Results, name: str, fmt: str) -> float | None:
    """Failed requests at every concurrency, and while every model of the server was busy."""
    served = results.models[name].served.get(ours(fmt))
    if served is None or not served.points:
        return None
    busy = results.all_busy.get(ours(fmt))
    busy_model = busy.models.get(name) if busy else None
    return sum(p.load.errors for p in served.points) + (busy_model.load.errors if busy_model else 0)


def ours_over_stock(results: Results, name: str, fmt: str) -> float | None:
    """Our throughput over the stock setup's, both serving ``fmt``, at the headline concurrency."""
    model = results.models[name]
    return ratio(served_rps(model, ours(fmt)), served_rps(model, STOCK))


def over_torchscript(results: Results, name: str, fmt: str) -> float | None:
    """Our served throughput in ``fmt`` over ours in TorchScript, at the headline concurrency."""
    model = results.models[name]
    return ratio(served_rps(model, ours(fmt)), served_rps(model, ours("torchscript")))


def served_over_attainable(results: Results, name: str, fmt: str) -> float | None:
    """Served throughput at the headline concurrency over the file's limit with exact
    preprocessing on the same cores (:func:`attainable_img_per_s`): how close the server comes
    to what its cores can do once decoding costs CPU too."""
    model = results.models[name]
    limit = model.in_process.get(fmt)
    if limit is None or model.preprocessing_ms is None:
        return None
    attainable = attainable_img_per_s(limit.limit_img_per_s, model.preprocessing_ms, limit.threads)
    return ratio(served_rps(model, ours(fmt)), attainable)


def over_torchscript_limit(results: Results, name: str, fmt: str) -> float | None:
    """Our served throughput in ``fmt`` at the headline concurrency over the FP32 TorchScript
    in-process limit: what the format gains over the best the default format could ever do."""
    model = results.models[name]
    return ratio(served_rps(model, ours(fmt)), limit_rps(model, "torchscript"))


@dataclass(frozen=True)
class Target:
    """One target. ``check`` is the row's title: ``{c}`` stands for the headline concurrency,
    ``{fmt}`` for the format, ``{max_c}`` for the run's largest concurrency. ``measure`` gives
    the figure for one model and format, or None when the run did not measure it."""

    check: str
    measure: Callable[[Results, str, str], float | None]
    direction: Literal[">=", "<=", "=="]
    threshold: float
    #: None: every format the run serves.
    formats: tuple[str, ...] | None = None

    def applies(self, model_format: str) -> bool:
        return self.formats is None or model_format in self.formats

    def row(self, results: Results, model: str, model_format: str) -> HeadlineRow:
        check = self.check.format(
            c=HEADLINE_CONCURRENCY, fmt=model_format, max_c=max(results.settings.concurrencies)
        )
        # As the headline shows it: ">= 0.85", "<= 10.0"; an equality is the value alone.
        target = f"{self.direction} {self.threshold}".removeprefix("== ")
        value = self.measure(results, model, model_format)
        if value is None:
            return HeadlineRow(check, model, None, target, False)
        passed = _COMPARE[self.direction](value, self.threshold)
        return HeadlineRow(check, model, round(value, 3), target, bool(passed))


#: Targets checked for each served format, format by format (the one with preprocessing: int8).
FORMAT_TARGETS = (
    Target("served c{c} / in-process limit ({fmt})", served_over_limit, ">=", 0.85),
    Target("p50 c1 - in-process batch-1 latency, ms ({fmt})", c1_overhead_ms, "<=", 10.0),
    Target("errors, c <= {max_c} ({fmt})", errors, "==", 0),
    Target(
        "served c{c} / in-process limit with exact preprocessing ({fmt})",
        served_over_attainable,
        ">=",
        0.85,
        ("int8",),
    ),
)
#: Targets comparing one setup with another, after a model's format targets. OpenVINO FP32 must
#: at least match TorchScript, or the report must say why it is not the default.
COMPARISON_TARGETS = (
    Target("ours / stock throughput at c{c}", ours_over_stock, ">=", 4.0, ("torchscript",)),
    Target("served {fmt} / served torchscript at c{c}", over_torchscript, ">=", 1.5, ("onnx",)),
    Target("served {fmt} / served torchscript at c{c}", over_torchscript, ">=", 1.0, ("openvino",)),
    Target(
        "served {fmt} c{c} / in-process limit (torchscript)",
        over_torchscript_limit,
        ">=",
        1.8,
        ("int8",),
    ),
)


def rows(results: Results) -> list[HeadlineRow]:
    """One row per target and (model, format) it applies to, grouped by model."""
    formats, found = results.settings.formats, []
    for name in results.models:
        for fmt in formats:
            found += [t.row(results, name, fmt) for t in FORMAT_TARGETS if t.applies(fmt)]
        for target in COMPARISON_TARGETS:
            found += [target.row(results, name, fmt) for fmt in formats if target.applies(fmt)]
    return found


def shown(value: float | None) -> str:
    """Counts as they are, ratios and milliseconds with three decimals (two would show a
    0.849 that misses its 0.85 target as 0.85)."""
    if value is None:
        return NOT_MEASURED
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def notes(results: Results) -> list[str]:
    """Every note, model by model (and within a model, format by format), then the run's."""
    found = [
        note for name, model in results.models.items() for note in _notes(results, name, model)
    ]
    peak = results.fp32_peak
    found.append(
        f"FP32 matmul peak: {peak.gflop_per_s:.1f} GFLOP/s ({peak.size} x {peak.size} float32 "
        f"torch.mm on {peak.threads} threads, best of {peak.calls} calls)"
    )
    for label, busy in results.all_busy.items():
        rates = " + ".join(f"{name} {m.load.throughput_rps:.1f}" for name, m in busy.models.items())
        found.append(
            f"{label}, all models busy at once ({busy.concurrency_per_model} clients each): "
            f"{rates} req/s; shares of their alone throughput add up to {busy.shares_sum:.2f}"
        )
    # How much CPU the load generator itself took from the server, at most.
    busiest = max((p.load.client_cpu_s / p.load.window_s for *_, p in results.points()), default=0)
    return [*found, f"load generator CPU: at most {busiest:.1%} of one core during a window"]


def _notes(results: Results, name: str, model: ModelResults) -> Iterator[str]:
    c, gflop, preprocessing = HEADLINE_CONCURRENCY, model.gflop_per_image, model.preprocessing_ms
    torchscript = model.in_process.get("torchscript")
    served = served_rps(model, ours("torchscript"))
    # Against an NCHW-only limit: what a plain ``torch.jit.load`` loop reaches (the limit itself
    # takes the best input layout).
    if served is not None and torchscript and "contiguous" in torchscript.img_per_s:
        nchw = max(torchscript.img_per_s["contiguous"].values())
        yield (
            f"{name}: served c{c} / NCHW-only in-process limit ({nchw:.1f} img/s) = "
            f"{served / nchw:.2f}"
        )
    for fmt, limit in model.in_process.items():
        served, rate = served_rps(model, ours(fmt)), limit.limit_img_per_s
        after = limit.limit_after_img_per_s
        # The limit with exact preprocessing on the same cores: what a server with no cost of its
        # own could reach.
        if served is not None and preprocessing is not None:
            cap = attainable_img_per_s(rate, preprocessing, limit.threads)
            yield (
                f"{name}: {fmt} limit with exact preprocessing on the same cores = {cap:.1f} "
                f"img/s ({cap / rate:.2f} of the limit); served c{c} / it = {served / cap:.2f}"
            )
        # How far the machine's speed moved while the server was measured.
        if served is not None and after is not None:
            yield (
                f"{name}: {fmt} limit measured again after serving: {after:.1f} img/s "
                f"({after / rate:.0%} of the first); served c{c} / it = {served / after:.2f}"
            )
        share = share_of_peak(rate, gflop, results.fp32_peak.gflop_per_s)
        why = " (int8 arithmetic is not bounded by the FP32 peak)" if fmt == "int8" else ""
        yield (
            f"{name}: {fmt} limit {rate:.1f} img/s x {gflop:.2f} GFLOP = {rate * gflop:.0f} "
            f"GFLOP/s, {share:.2f} of the FP32 matmul peak{why}"
        )
        yield (
            f"{name}: {fmt} limit on one thread {limit.one_thread_img_per_s:.1f} img/s, on "
            f"{limit.threads} threads {rate:.1f} (batch {limit.best_batch}, {limit.best_layout}): "
            f"thread scaling {thread_scaling(limit):.2f}"
        )
    int8 = model.in_process.get("int8")
    if int8 and preprocessing is not None:
        share = preprocessing_share(preprocessing, int8.limit_img_per_s, int8.threads)
        inference_ms = int8.threads / int8.limit_img_per_s * 1000
        yield (
            f"{name}: at int8 speed exact preprocessing is {share:.0%} of the CPU per image "
            f"({preprocessing:.2f} ms per photo, int8 inference {inference_ms:.2f} ms = "
            "cores / limit)"
        )
    v2, predictions = model.point(V2, c), model.point(ours("torchscript"), c)
    ratio_v2 = v2_over_predictions(model)
    if v2 and predictions and ratio_v2 is not None:
        lat, base = v2.load.latency_ms, predictions.load.latency_ms
        yield (
            f"{name}: v2 /infer / /predictions at c{c} (TorchScript) = {ratio_v2:.2f} "
            f"({v2.load.throughput_rps:.1f} vs {predictions.load.throughput_rps:.1f} req/s; p50 "
            f"{lat.p50:.0f} vs {base.p50:.0f} ms, p99 {lat.p99:.0f} vs {base.p99:.0f} ms; "
            f"{v2.load.errors} errors)"
        )
    sizes = model.served.get(ours("torchscript"))
    if sizes and sizes.jpeg_size:
        ratio_jpeg = sizes.jpeg_size.p50_ratio_large_over_small
        yield f"{name}: p50 at c1 of a 12 MP JPEG / a 0.3 MP JPEG = {ratio_jpeg:.2f}"


def busiest_other(results: Results) -> float:
    """The most cores other processes used during any one measurement of the run."""
    others = [
        results.fp32_peak.other,
        *(limit.other for *_, limit in results.limits()),
        *(point.other for *_, point in results.points()),
        *(busy.other for busy in results.all_busy.values()),
    ]
    return max(other.other_cores for other in others)


def v2_over_predictions(model: ModelResults) -> float | None:
    """Throughput of our TorchScript archive asked over the Open Inference Protocol, against
    the same archive asked over /predictions (same server and clients)."""
    return ratio(served_rps(model, V2), served_rps(model, ours("torchscript")))
