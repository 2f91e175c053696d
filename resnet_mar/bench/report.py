"""What a run reports, rendered from :class:`Results` alone: ``report.md`` (:func:`render`) and
the lines printed at the end of the run (:func:`summary`).

``report.md`` is :data:`REPORT` filled in: its prose reads here as it renders, its tables are
built from the typed results by :func:`markdown_table`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict

from resnet_mar.bench import headline
from resnet_mar.bench.headline import NOT_MEASURED, shown
from resnet_mar.bench.results import HeadlineRow, ModelResults, Results, ServedPoint
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, JPEG_QUALITY, PHOTOS, V2, ours
from resnet_mar.quantization import MAX_TOP1_PROBABILITY_ERROR, MIN_TOP1_AGREEMENT
from resnet_mar.worker_environment import WORKER_ENVIRONMENT


def unwrapped(template: str) -> str:
    """``template`` with each line break inside a paragraph turned into a space: the source
    wraps the prose at 100 columns, the report keeps a paragraph on one line."""
    return re.sub(r"(?<=\S)\n(?=\S)", " ", template.lstrip("\n"))


REPORT = unwrapped("""
# Benchmark: served ResNets against the in-process limit and the stock setup

Run of {results.started}, {results.wall_time_s:.0f} s wall time. Load average (1, 5, 15 min) at
start {results.load_start}, at end {results.load_end}. Other work on this machine shares its cores
and lowers every figure: the tables give, for each measurement, the cores other processes used
meanwhile (machine CPU time minus this benchmark's and its server's); the most was {busiest:.2f}
cores.

## Machine and versions

{machine_table}

Load: closed-loop clients ({concurrencies}), each point {settings.duration_s:.0f} s after a
warm-up of at least {settings.warmup_s:.0f} s (and until every client had one answer); JPEG photos
({photos}; PNGs re-encoded at quality {jpeg_quality}); untrained weights. Our setups serve all the
models from one server, as `make serve` does (each model measured while the others idle, then all
loaded at once); the stock setup serves each model alone. One server at a time.{int8_gate}

## Headline

{headline_table}

{notes}

## In-process limit (the served file, all cores, inference only)

{batch_table}

The limit of a file is its best figure above; its batch-1 latency, the best layout's.

{limit_table}

The limit is measured again at its best batch and layout right after that format's served
measurements; the gap between the two shows how far this machine's speed moved meanwhile (the
cores are shared with other tenants of the host, unseen from inside).

Exact preprocessing (decode, resize, crop, normalise, as served), CPU per photo: {preprocessing}.
The limit leaves it out, but a server spends it on the same cores, so even a server with no cost
of its own could reach at most 1 / (1 / limit + preprocessing / cores) images per second; the
printed notes give that figure and served / it.

## Arithmetic: each limit against the FP32 peak and against one thread

FP32 matmul peak of this machine: {peak.gflop_per_s:.1f} GFLOP/s ({peak.size} x {peak.size}
float32 `torch.mm` on {peak.threads} threads, the best of {peak.calls} calls after a warm-up,
measured right before the limits; other load {peak.other.other_cores:.2f} cores).

{arithmetic_table}

GFLOP per image: `torch.utils.flop_counter` on torchvision's eager model for one crop, a
multiply-add counting 2 (convolutions and classifier; the same for every format). A limit's share
of the peak is its images per second x GFLOP per image / the peak: how much of the cores' FP32
arithmetic the runtime turns into images. int8 arithmetic is not bounded by the FP32 peak (int8
instructions, VNNI or AMX, do several times more operations per cycle), so its share can exceed 1.

One thread: the same file loaded on one thread, at the limit's batch and layout. Thread scaling =
limit / (threads x one thread): 1 when every thread adds a whole core's worth of images. The
further below 1, the more a machine with more cores would gain from several workers with fewer
threads each over one worker with all of them (README, "Scaling").

## Served

{served_table}

Setups: `ours-<format>` = our handler and model-config.yaml with the project's config.properties
and the workers' environment `make serve` sets ({environment}); `stock` = the same .pt with
`--handler image_classifier`, no model-config, TorchServe's default config and environment
(default_workers_per_model = cores, batch 1).

## Open Inference Protocol (v2) against /predictions ({c} clients)

{v2_table}

`{v2}` = our TorchScript archive in the same server settings as `ours-torchscript` (both models in
one server), asked with one photo per request as the Open Inference Protocol carries it: the JPEG's
base64 in a JSON body (4/3 of its bytes), which the worker parses and base64-decodes before
decoding and classifying it as any other photo; {c} clients only, measured right after
`ours-torchscript`.

## All models busy at once (one server, as `make serve` runs them)

{all_busy_table}

Shares add up to about 1 when the models split the machine without loss (the handler's compute
gate makes their batches take turns, each with all cores); threads of two models running side by
side would oversubscribe the cores and add up to far less.

## Large JPEG (our handler, concurrency 1)

{jpeg_table}

p50 ratio 12 MP / 0.3 MP: {jpeg_ratios}.

![throughput and p99 against concurrency](bench.png)
""")

#: The paragraph on the int8 builds' gate, after the load's when the run built int8 models.
INT8_GATE = unwrapped("""
The int8 models are built with a relaxed quality gate: top-1 agreement with FP32 >=
{gate.min_agreement} and top-1 probability error <= {gate.max_error} on the held-aside photos,
instead of the defaults for trained weights ({agreement} and {error}), which untrained networks
miss: random weights exaggerate quantization error (docs/benchmark/int8.md). The gate checks
answers, not speed: a trained model's int8 file has the same graph.""")


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
