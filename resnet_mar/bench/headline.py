"""The headline: the project's targets as data, checked on every model of a run, and the notes
under it (figures without a target that explain it; their text is ``notes.md``, beside this).

Each (model, format) a target applies to gives one row. A figure the run did not measure fails
its row, saying so: a broken measurement must not look like a target that needs no checking.
A format the run did not serve gives no rows; a note whose figures were not measured is left out.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Literal

from resnet_mar.bench.results import (
    BoundBeside,
    HeadlineRow,
    InProcessLimit,
    ModelResults,
    Results,
)
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, STOCK, V2, ours, served_setups

#: Our TorchScript setup, the one the others are compared with.
TS = ours("torchscript")
NOT_MEASURED = "not measured"
#: Each note's text by its name, from the list items ``- name: text`` of ``notes.md``.
NOTES = dict(
    line.removeprefix("- ").split(": ", 1)
    for line in (Path(__file__).parent / "notes.md").read_text().splitlines()
    if line.startswith("- ")
)

Measure = Callable[[Results, str, str], float | None]


def attainable_img_per_s(limit_img_per_s: float, preprocessing_ms: float, cores: int) -> float:
    """The most images per second the limit's cores can classify when each image also costs
    ``preprocessing_ms`` of CPU, spread over the cores."""
    return 1 / (1 / limit_img_per_s + preprocessing_ms / 1000 / cores)


def share_of_peak(limit_img_per_s: float, gflop_per_image: float, peak_gflop_per_s: float) -> float:
    return limit_img_per_s * gflop_per_image / peak_gflop_per_s


def thread_scaling(limit: InProcessLimit) -> float:
    """1 when every thread adds a whole core's worth of images."""
    return limit.limit_img_per_s / (limit.threads * limit.one_thread_img_per_s)


def served_rps(model: ModelResults, label: str) -> float | None:
    point = model.point(label, HEADLINE_CONCURRENCY)
    return point.load.throughput_rps if point else None


def bound_beside(model: ModelResults, fmt: str) -> BoundBeside | None:
    served = model.served.get(ours(fmt))
    return served.bound_beside if served else None


def limit_rps(model: ModelResults, fmt: str) -> float | None:
    """The in-process limit a format's served figures are held to: the mean of the limits
    measured beside its headline point, or, in runs without them, the one from the start."""
    limit, beside = model.in_process.get(fmt), bound_beside(model, fmt)
    if limit is None:
        return None
    return fmean(beside.limit_img_per_s) if beside else limit.limit_img_per_s


def bound_figures(model: ModelResults, fmt: str) -> tuple[float, float, int] | None:
    """The limit (img/s), exact preprocessing (ms per photo) and cores of a format's bound:
    the means of the figures measured beside its headline point, or, in runs without them,
    those measured at the start."""
    limit, rate, beside = model.in_process.get(fmt), limit_rps(model, fmt), bound_beside(model, fmt)
    preprocessing = fmean(beside.preprocessing_ms) if beside else model.preprocessing_ms
    if limit is None or rate is None or preprocessing is None:
        return None
    return rate, preprocessing, limit.threads


def attainable(model: ModelResults, fmt: str) -> float | None:
    figures = bound_figures(model, fmt)
    return attainable_img_per_s(*figures) if figures else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """None when either side was not measured, or the denominator is zero (a setup with no
    answer in its window): the run must still write its report."""
    return None if numerator is None or not denominator else numerator / denominator


def over(denominator: Callable[[ModelResults, str], float | None], of: str = "") -> Measure:
    """Our throughput served in the row's format at the headline concurrency, over a figure of
    the model: ``denominator(model, of)``, ``of`` the row's format when not given."""

    def measure(results: Results, name: str, fmt: str) -> float | None:
        model = results.models[name]
        return ratio(served_rps(model, ours(fmt)), denominator(model, of or fmt))

    return measure


def c1_overhead_ms(results: Results, name: str, fmt: str) -> float | None:
    """What serving adds to one image: p50 at one client minus the in-process batch-1 latency."""
    model = results.models[name]
    point, limit = model.point(ours(fmt), 1), model.in_process.get(fmt)
    return point.load.latency_ms.p50 - limit.batch1_latency_ms if point and limit else None


def errors(results: Results, name: str, fmt: str) -> float | None:
    """Failed requests at every concurrency, and while every model of the server was busy."""
    served = results.models[name].served.get(ours(fmt))
    if served is None or not served.points:
        return None
    busy = results.all_busy.get(ours(fmt))
    busy_model = busy.models.get(name) if busy else None
    return sum(p.load.errors for p in served.points) + (busy_model.load.errors if busy_model else 0)


@dataclass(frozen=True)
class Target:
    """``check`` is the row's title: ``{c}`` the headline concurrency, ``{fmt}`` the format,
    ``{max_c}`` the run's largest concurrency. ``formats`` None: every format served."""

    check: str
    measure: Measure
    direction: Literal[">=", "<=", "=="]
    threshold: float
    formats: tuple[str, ...] | None = None

    def applies(self, model_format: str) -> bool:
        return self.formats is None or model_format in self.formats

    def row(self, results: Results, model: str, model_format: str) -> HeadlineRow:
        max_c = max(results.settings.concurrencies)
        check = self.check.format(c=HEADLINE_CONCURRENCY, fmt=model_format, max_c=max_c)
        target = f"{self.direction} {self.threshold}".removeprefix("== ")
        value = self.measure(results, model, model_format)
        if value is None:
            return HeadlineRow(check, model, None, target, False)
        compare = {">=": operator.ge, "<=": operator.le, "==": operator.eq}[self.direction]
        return HeadlineRow(check, model, round(value, 3), target, compare(value, self.threshold))


#: The share of the exact-preprocessing bound every served setup is held to: the last 10% of a
#: setup's throughput is where decoding overlapped with inference would show.
BOUND_SHARE = 0.9
FORMAT_TARGETS = (
    Target("served c{c} / in-process limit ({fmt})", over(limit_rps), ">=", 0.85),
    Target("p50 c1 - in-process batch-1 latency, ms ({fmt})", c1_overhead_ms, "<=", 10.0),
    Target("errors, c <= {max_c} ({fmt})", errors, "==", 0),
    Target(
        "served c{c} / in-process limit with exact preprocessing ({fmt})",
        over(attainable),
        ">=",
        BOUND_SHARE,
    ),
)
#: After a model's format targets. OpenVINO FP32 must at least match TorchScript, or the report
#: must say why it is not the default.
COMPARISON_TARGETS = (
    Target("ours / stock throughput at c{c}", over(served_rps, STOCK), ">=", 4.0, ("torchscript",)),
    Target("served {fmt} / served torchscript at c{c}", over(served_rps, TS), ">=", 1.5, ("onnx",)),
    Target(
        "served {fmt} / served torchscript at c{c}", over(served_rps, TS), ">=", 1.0, ("openvino",)
    ),
    Target(
        "served {fmt} c{c} / in-process limit (torchscript)",
        over(limit_rps, "torchscript"),
        ">=",
        1.8,
        ("int8",),
    ),
)


def rows(results: Results) -> list[HeadlineRow]:
    formats, found = results.settings.formats, []
    for name in results.models:
        for fmt in formats:
            found += [t.row(results, name, fmt) for t in FORMAT_TARGETS if t.applies(fmt)]
        for t in COMPARISON_TARGETS:
            found += [t.row(results, name, fmt) for fmt in formats if t.applies(fmt)]
    return found


def shown(value: float | None) -> str:
    """Counts as they are, the rest with three decimals (two would show a 0.849 that misses its
    0.85 target as 0.85)."""
    if value is None:
        return NOT_MEASURED
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def fill_note(which: str, /, **figures: object) -> str:
    return NOTES[which].format(c=HEADLINE_CONCURRENCY, **figures)


def notes(results: Results) -> list[str]:
    found = [
        note for name, model in results.models.items() for note in _notes(results, name, model)
    ]
    found.append(fill_note("peak of the run", peak=results.fp32_peak))
    for label, busy in results.all_busy.items():
        rates = " + ".join(f"{name} {m.load.throughput_rps:.1f}" for name, m in busy.models.items())
        found.append(fill_note("all busy", label=label, busy=busy, rates=rates))
    busiest = max((p.load.client_cpu_s / p.load.window_s for *_, p in results.points()), default=0)
    return [*found, fill_note("load generator", busiest=busiest)]


def _notes(results: Results, name: str, model: ModelResults) -> Iterator[str]:
    gflop, preprocessing = model.gflop_per_image, model.preprocessing_ms
    note = functools.partial(fill_note, name=name)
    torchscript = model.in_process.get("torchscript")
    served = served_rps(model, TS)
    # Against the NCHW-only limit: what a plain torch.jit.load loop reaches.
    if served is not None and torchscript and "contiguous" in torchscript.img_per_s:
        nchw = max(torchscript.img_per_s["contiguous"].values())
        yield note("nchw", nchw=nchw, ratio=served / nchw)
    for fmt, limit in model.in_process.items():
        served, rate = served_rps(model, ours(fmt)), limit.limit_img_per_s
        if served is not None and preprocessing is not None:
            cap = attainable_img_per_s(rate, preprocessing, limit.threads)
            yield note("exact", fmt=fmt, cap=cap, share=cap / rate, ratio=served / cap)
            beside = bound_beside(model, fmt)
            bound = attainable(model, fmt)
            if beside and bound:
                yield note(
                    "beside",
                    fmt=fmt,
                    limits=" and ".join(f"{v:.1f}" for v in beside.limit_img_per_s),
                    preprocessing=" and ".join(f"{v:.2f}" for v in beside.preprocessing_ms),
                    bound=bound,
                    share=bound / cap,
                    ratio=served / bound,
                )
        share = share_of_peak(rate, gflop, results.fp32_peak.gflop_per_s)
        kind = "int8 peak" if fmt == "int8" else "peak"
        yield note(kind, fmt=fmt, rate=rate, gflop=gflop, gflop_per_s=rate * gflop, share=share)
        yield note("threads", fmt=fmt, limit=limit, rate=rate, scaling=thread_scaling(limit))
    int8 = model.in_process.get("int8")
    # Where preprocessing nears half an image's CPU, decoding, not the model, sets the pace.
    if int8 and preprocessing is not None:
        inference_ms = int8.threads / int8.limit_img_per_s * 1000
        share = preprocessing / (preprocessing + inference_ms)
        yield note("int8 preprocessing", model=model, share=share, inference_ms=inference_ms)
    v2, predictions = model.point(V2, HEADLINE_CONCURRENCY), model.point(TS, HEADLINE_CONCURRENCY)
    ratio_v2 = v2_over_predictions(model)
    if v2 and predictions and ratio_v2 is not None:
        yield note("v2", ratio=ratio_v2, v2=v2.load, base=predictions.load)
    sizes = model.served.get(TS)
    if sizes and sizes.jpeg_size:
        yield note("jpeg", ratio=sizes.jpeg_size.p50_ratio_large_over_small)


@dataclass(frozen=True)
class CpuRow:
    """A setup's CPU at the headline concurrency. ``model_work_ms``: what an image needs at the
    least, exact preprocessing plus inference at the limit (cores / limit); None for the stock
    setup (it preprocesses otherwise) or when not measured. ``ceiling_rps``: the answers per
    second this CPU per answer would give with every core busy. Below the exact-preprocessing
    bound, busier cores alone cannot reach it: the server's own CPU per answer must fall.
    ``through_torchserve_rps``: the same with the model work plus TorchServe's own CPU per
    answer (the empty handler's, :func:`floor_ms`), what no handler inside TorchServe can pass
    on this machine; None when either was not measured. ``idle_ms``: the cores' time per answer
    that no process used, so that the row accounts for every core's time."""

    model: str
    label: str
    rps: float
    busy_cores: float
    ms_per_answer: dict[str, float]
    idle_ms: float
    model_work_ms: float | None
    ceiling_rps: float
    bound_rps: float | None
    through_torchserve_rps: float | None


def floor_ms(results: Results) -> float | None:
    """TorchServe's own CPU per answer, every part's: the empty handler's at the headline
    concurrency (frontend, worker protocol, doors, load generator)."""
    floor = results.protocol_floor
    if floor is None or floor.cpu is None or not floor.load.requests:
        return None
    return sum(floor.cpu.ms_per_answer.values())


def cpu_rows(results: Results) -> list[CpuRow]:
    formats = {s.label: s.model_format for s in served_setups(results.settings.formats)}
    cores, floor = results.machine.cores, floor_ms(results)
    found = []
    for name, model in results.models.items():
        for label in model.served:
            point = model.point(label, HEADLINE_CONCURRENCY)
            if point is None or point.cpu is None or not point.load.requests:
                continue
            fmt = formats.get(label) if label != STOCK else None  # stock preprocesses otherwise
            figures = bound_figures(model, fmt) if fmt else None
            work = bound = None
            if figures:
                rate, preprocessing, threads = figures
                work = preprocessing + threads * 1000 / rate
                bound = attainable_img_per_s(*figures)
            spent = point.cpu.ms_per_answer
            ceiling = cores * 1000 / max(sum(spent.values()), 1e-9)
            through = None if work is None or floor is None else cores * 1000 / (work + floor)
            rps, busy = point.load.throughput_rps, point.cpu.busy_cores
            idle = max(0.0, cores - busy) * 1000 / rps
            row = CpuRow(name, label, rps, busy, spent, idle, work, ceiling, bound, through)
            found.append(row)
    return found


def busiest_other(results: Results) -> float:
    """The most cores other processes used during any one measurement of the run."""
    others = [
        results.fp32_peak.other,
        *(limit.other for *_, limit in results.limits()),
        *(point.other for *_, point in results.points()),
        *(busy.other for busy in results.all_busy.values()),
        *(
            served.bound_beside.other
            for model in results.models.values()
            for served in model.served.values()
            if served.bound_beside
        ),
    ]
    return max(other.other_cores for other in others)


def v2_over_predictions(model: ModelResults) -> float | None:
    """Our TorchScript archive over the Open Inference Protocol, against over /predictions."""
    return ratio(served_rps(model, V2), served_rps(model, TS))
