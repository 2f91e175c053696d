"""The headline: the project's targets, as data, checked against a run's results.

A :class:`Target` names its check, the figure it measures, a threshold with its direction, and
the formats and models it applies to (every one the run measured, unless it names some). Each
applicable (model, format) gives one row, and a figure the run did not measure gives a FAIL row
that says so: a broken measurement must not look like a target that needs no checking. A format
the run did not serve gives no rows.

The targets, every one applying to every model:

* serving: served at 16 clients / the in-process limit >= 0.85, p50 at one client minus the
  in-process batch-1 latency <= 10 ms, no errors (each format); ours / stock >= 4 (TorchScript);
  served ONNX / served TorchScript >= 1.5;
* int8 and OpenVINO: served int8 / the int8 limit with exact preprocessing >= 0.85 (what a
  server with no cost of its own could reach once decoding, not inference, is most of the CPU);
  served int8 / the FP32 TorchScript limit >= 1.8; served OpenVINO FP32 / served TorchScript
  >= 1.0 (else the report must say why it is not the default).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from resnet_mar.bench.notes import attainable_img_per_s
from resnet_mar.bench.results import HeadlineRow, Results
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, STOCK, ours

#: A target's figure for one model and format, or None when the run did not measure it.
Measure = Callable[[Results, str, str], float | None]

NOT_MEASURED = "not measured"

_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    """One target. ``check`` is the row's title: ``{c}`` stands for the headline concurrency,
    ``{fmt}`` for the format, ``{max_c}`` for the run's largest concurrency."""

    check: str
    measure: Measure
    direction: Literal[">=", "<=", "=="]
    threshold: float
    #: None: every format the run serves.
    formats: tuple[str, ...] | None = None
    #: None: every model the run measures.
    models: tuple[str, ...] | None = None

    @property
    def target(self) -> str:
        """As the headline shows it: ``>= 0.85``, ``<= 10.0``; an equality is the value alone."""
        return (
            str(self.threshold) if self.direction == "==" else f"{self.direction} {self.threshold}"
        )

    def applies(self, model: str, model_format: str) -> bool:
        return (self.formats is None or model_format in self.formats) and (
            self.models is None or model in self.models
        )

    def row(self, results: Results, model: str, model_format: str) -> HeadlineRow:
        check = self.check.format(
            c=HEADLINE_CONCURRENCY, fmt=model_format, max_c=max(results.settings.concurrencies)
        )
        value = self.measure(results, model, model_format)
        if value is None:
            return HeadlineRow(check, model, None, self.target, False)
        passed = _COMPARE[self.direction](value, self.threshold)
        return HeadlineRow(check, model, round(value, 3), self.target, bool(passed))


def served_over_limit(results: Results, name: str, fmt: str) -> float | None:
    """Throughput served at the headline concurrency over the in-process limit of that file."""
    model = results.models[name]
    point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    limit = model.in_process.get(fmt)
    if point is None or limit is None:
        return None
    return point.load.throughput_rps / limit.limit_img_per_s


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


def _over(numerator: float, denominator: float) -> float | None:
    """A ratio of two served throughputs; None (not measured) when the denominator's setup gave
    no answer in its window: a ratio against nothing measures nothing, and a run that ends
    this way must still write its report (its served table shows the errors)."""
    return numerator / denominator if denominator else None


def ours_over_stock(results: Results, name: str, fmt: str) -> float | None:
    """Our throughput over the stock setup's, both serving ``fmt``, at the headline concurrency."""
    model = results.models[name]
    ours_point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    stock_point = model.point(STOCK, HEADLINE_CONCURRENCY)
    if ours_point is None or stock_point is None:
        return None
    return _over(ours_point.load.throughput_rps, stock_point.load.throughput_rps)


def over_torchscript(results: Results, name: str, fmt: str) -> float | None:
    """Our served throughput in ``fmt`` over ours in TorchScript, at the headline concurrency."""
    model = results.models[name]
    point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    torchscript = model.point(ours("torchscript"), HEADLINE_CONCURRENCY)
    if point is None or torchscript is None:
        return None
    return _over(point.load.throughput_rps, torchscript.load.throughput_rps)


def served_over_attainable(results: Results, name: str, fmt: str) -> float | None:
    """Served throughput at the headline concurrency over the file's limit with exact
    preprocessing on the same cores (:func:`~resnet_mar.bench.notes.attainable_img_per_s`):
    how close the server comes to what its cores can do once decoding costs CPU too."""
    model = results.models[name]
    point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    limit = model.in_process.get(fmt)
    if point is None or limit is None or model.preprocessing_ms is None:
        return None
    attainable = attainable_img_per_s(limit.limit_img_per_s, model.preprocessing_ms, limit.threads)
    return point.load.throughput_rps / attainable


def over_torchscript_limit(results: Results, name: str, fmt: str) -> float | None:
    """Our served throughput in ``fmt`` at the headline concurrency over the FP32 TorchScript
    in-process limit: what the format gains over the best the default format could ever do."""
    model = results.models[name]
    point = model.point(ours(fmt), HEADLINE_CONCURRENCY)
    limit = model.in_process.get("torchscript")
    if point is None or limit is None:
        return None
    return point.load.throughput_rps / limit.limit_img_per_s


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
        formats=("int8",),
    ),
)
#: Targets comparing one setup with another, after a model's format targets.
COMPARISON_TARGETS = (
    Target("ours / stock throughput at c{c}", ours_over_stock, ">=", 4.0, formats=("torchscript",)),
    Target(
        "served {fmt} / served torchscript at c{c}",
        over_torchscript,
        ">=",
        1.5,
        formats=("onnx",),
    ),
    Target(
        "served {fmt} / served torchscript at c{c}",
        over_torchscript,
        ">=",
        1.0,
        formats=("openvino",),
    ),
    Target(
        "served {fmt} c{c} / in-process limit (torchscript)",
        over_torchscript_limit,
        ">=",
        1.8,
        formats=("int8",),
    ),
)


def headline(results: Results) -> list[HeadlineRow]:
    """One row per target and (model, format) it applies to, grouped by model."""
    formats = results.settings.formats
    rows = []
    for model in results.models:
        for fmt in formats:
            rows += [t.row(results, model, fmt) for t in FORMAT_TARGETS if t.applies(model, fmt)]
        for target in COMPARISON_TARGETS:
            rows += [
                target.row(results, model, fmt) for fmt in formats if target.applies(model, fmt)
            ]
    return rows


def shown(value: float | None) -> str:
    """Counts as they are, ratios and milliseconds with three decimals (two would show a
    0.849 that misses its 0.85 target as 0.85)."""
    if value is None:
        return NOT_MEASURED
    return str(value) if isinstance(value, int) else f"{value:.3f}"
