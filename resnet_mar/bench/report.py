"""What a run reports, from :class:`Results` alone: ``report.md`` (:func:`render`, the template
``report.md`` beside this module filled in) and the lines printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from resnet_mar.bench import headline
from resnet_mar.bench.headline import NOT_MEASURED, shown
from resnet_mar.bench.results import HeadlineRow, ModelResults, Results, ServedPoint
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, JPEG_QUALITY, PHOTOS, V2, ours
from resnet_mar.quantization import MAX_TOP1_PROBABILITY_ERROR, MIN_TOP1_AGREEMENT
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

#: ``report.md`` as it reads, its paragraphs on one line each: its figures and tables are
#: filled in by :func:`render`.
REPORT = (Path(__file__).parent / "report.md").read_text()
#: The paragraph on the int8 builds' gate, after the load's when the run built int8 models.
INT8_GATE = (
    "The int8 models are built with a relaxed quality gate: top-1 agreement with FP32 >= "
    "{gate.min_agreement} and top-1 probability error <= {gate.max_error} on the held-aside "
    "photos, instead of the defaults for trained weights ({agreement} and {error}), which "
    "untrained networks miss: random weights exaggerate quantization error "
    "(docs/benchmark/int8.md). The gate checks answers, not speed: a trained model's int8 file "
    "has the same graph."
)


def markdown_table(header: str, rows: Iterable[str]) -> str:
    """A markdown table from its title row and its rows, each as it reads between the outer
    bars. A title ending in ">" is right-aligned (numbers); the ">" is not shown."""
    columns = header.split(" | ")
    rules = "|".join("---:" if c.endswith(">") else "---" for c in columns)
    titles = " | ".join(c.removesuffix(">") for c in columns)
    return "\n".join([f"| {titles} |", f"|{rules}|", *(f"| {row} |" for row in rows)])


def render(results: Results) -> str:
    """The whole report."""
    gate, peak, models = results.settings.int8_gate, results.fp32_peak, results.models
    limits = list(results.limits())
    jpeg_sizes = {
        name: served.jpeg_size
        for name, model in models.items()
        for served in [model.served.get(ours("torchscript"))]
        if served and served.jpeg_size
    }
    batches = sorted({b for *_, limit in limits for s in limit.img_per_s.values() for b in s})
    defaults = {"agreement": MIN_TOP1_AGREEMENT, "error": MAX_TOP1_PROBABILITY_ERROR}
    int8_gate = "" if gate is None else "\n\n" + INT8_GATE.format(gate=gate, **defaults)
    return REPORT.format(
        results=results,
        settings=results.settings,
        peak=peak,
        busiest=headline.busiest_other(results),
        machine_table=markdown_table(
            "item | value",
            (f"{k} | {v}" for k, v in {**asdict(results.machine), **results.versions}.items()),
        ),
        concurrencies=", ".join(map(str, results.settings.concurrencies)),
        photos=", ".join(p.name for p in PHOTOS),
        jpeg_quality=JPEG_QUALITY,
        int8_gate=int8_gate,
        headline_table=headline_table(headline.rows(results)),
        notes="\n".join(f"- {note}" for note in headline.notes(results)),
        batch_table=markdown_table(
            f"model | format | input layout | {' | '.join(f'b{b} img/s>' for b in batches)} | "
            "batch-1 latency ms>",
            (
                f"{name} | {fmt} | {layout} | {' | '.join(f'{speeds[b]:.1f}' for b in batches)} | "
                f"{limit.batch1_ms[layout]:.1f}"
                for name, fmt, _, limit in limits
                for layout, speeds in limit.img_per_s.items()
            ),
        ),
        limit_table=markdown_table(
            "model | format | limit img/s> | at | batch-1 latency ms> | other load (cores)> | "
            "limit again after serving, img/s>",
            (
                f"{name} | {fmt} | {limit.limit_img_per_s:.1f} | batch {limit.best_batch}, "
                f"{limit.best_layout} | {limit.batch1_latency_ms:.1f} | "
                f"{limit.other.other_cores:.2f} | "
                + (NOT_MEASURED if again is None else f"{again:.1f}")
                for name, fmt, _, limit in limits
                for again in [limit.limit_after_img_per_s]
            ),
        ),
        preprocessing=", ".join(
            f"{name} {model.preprocessing_ms:.2f} ms"
            for name, model in models.items()
            if model.preprocessing_ms is not None
        ),
        arithmetic_table=markdown_table(
            "model | format | GFLOP per image> | limit img/s> | limit GFLOP/s> | "
            "share of FP32 peak> | one thread img/s> | thread scaling>",
            (
                f"{name} | {fmt} | {gflop:.2f} | {rate:.1f} | {rate * gflop:.0f} | "
                f"{headline.share_of_peak(rate, gflop, peak.gflop_per_s):.2f} | "
                f"{limit.one_thread_img_per_s:.1f} | {headline.thread_scaling(limit):.2f}"
                for name, fmt, model, limit in limits
                for gflop, rate in [(model.gflop_per_image, limit.limit_img_per_s)]
            ),
        ),
        served_table=markdown_table(
            "model | setup | concurrency> | req/s> | p50 ms> | p90 ms> | p99 ms> | errors> | "
            "answers in window> | other load (cores)>",
            (
                f"{name} | {label} | {p.load.concurrency} | {p.load.throughput_rps:.1f} | "
                f"{lat.p50:.0f} | {lat.p90:.0f} | {lat.p99:.0f} | {p.load.errors} | "
                f"{p.load.requests} | {p.other.other_cores:.2f}"
                for name, label, p in results.points()
                for lat in [p.load.latency_ms]
            ),
        ),
        environment=", ".join(f"`{k}={v}`" for k, v in WORKER_ENVIRONMENT.items()),
        c=HEADLINE_CONCURRENCY,
        v2_table=markdown_table(
            "model | request | req/s> | p50 ms> | p99 ms> | errors> | v2 / /predictions req/s>",
            (row for name, model in models.items() for row in v2_rows(name, model)),
        ),
        v2=V2,
        all_busy_table=markdown_table(
            "setup | model | clients> | req/s> | p50 ms> | p99 ms> | errors> | "
            "share of its alone req/s> | other load (cores)>",
            (
                f"{label} | {name} | {m.load.concurrency} | {m.load.throughput_rps:.1f} | "
                f"{m.load.latency_ms.p50:.0f} | {m.load.latency_ms.p99:.0f} | {m.load.errors} | "
                f"{m.share_of_alone:.2f} | {busy.other.other_cores:.2f}"
                for label, busy in results.all_busy.items()
                for name, m in busy.models.items()
            ),
        ),
        jpeg_table=markdown_table(
            "model | image | bytes> | p50 ms> | p99 ms>",
            (
                f"{name} | {point.pixels} | {point.bytes} | {point.load.latency_ms.p50:.1f} | "
                f"{point.load.latency_ms.p99:.1f}"
                for name, sizes in jpeg_sizes.items()
                for point in (sizes.small, sizes.large)
            ),
        ),
        jpeg_ratios=", ".join(
            f"{name} {s.p50_ratio_large_over_small:.2f}" for name, s in jpeg_sizes.items()
        ),
    )


def headline_table(rows: Iterable[HeadlineRow]) -> str:
    return markdown_table(
        "check | model | measured> | target | result",
        (
            f"{r.check} | {r.model} | {shown(r.value)} | {r.target} | "
            + ("PASS" if r.passed else "FAIL")
            for r in rows
        ),
    )


def v2_rows(name: str, model: ModelResults) -> list[str]:
    """The Open Inference Protocol against /predictions: same archive, server and clients."""
    c = HEADLINE_CONCURRENCY
    predictions, v2 = model.point(ours("torchscript"), c), model.point(V2, c)
    ratio = headline.v2_over_predictions(model)
    return [
        f"{name} | `PUT /predictions/<m>`, raw JPEG | {cells(predictions)} | ",
        f"{name} | `POST /v2/models/<m>/infer`, JSON, base64 | {cells(v2)} | "
        + (NOT_MEASURED if ratio is None else f"{ratio:.2f}"),
    ]


def cells(point: ServedPoint | None) -> str:
    if point is None:
        return " | ".join([NOT_MEASURED] * 4)
    lat = point.load.latency_ms
    return f"{point.load.throughput_rps:.1f} | {lat.p50:.0f} | {lat.p99:.0f} | {point.load.errors}"


def summary(results: Results) -> list[str]:
    """What the run prints at its end: the headline, the notes and the other load."""
    lines = ["", "Headline (the targets):"]
    for r in headline.rows(results):
        passed = "PASS" if r.passed else "FAIL"
        lines.append(f"  {passed}  {r.model:9s} {r.check}: {shown(r.value)} (target {r.target})")
    lines += [f"  info  {note}" for note in headline.notes(results)]
    lines.append(
        f"load average at start {results.load_start}, at end {results.load_end}; other "
        f"processes used at most {headline.busiest_other(results):.2f} cores during a measurement"
    )
    return lines
