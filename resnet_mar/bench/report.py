"""What a run reports, rendered from :class:`Results` alone: ``report.md`` (:func:`render`) and
the lines printed at the end of the run (:func:`summary`).

The document is a list of blocks (a heading, a paragraph, a table, a list) separated by blank
lines. Each section is one function: its prose is text in that function, its tables come from
:func:`markdown_table`, whose rows are built from the typed results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from resnet_mar.bench.headline import (
    NOT_MEASURED,
    busiest_other,
    headline,
    notes,
    share_of_peak,
    shown,
    thread_scaling,
)
from resnet_mar.bench.load_client import LoadPoint
from resnet_mar.bench.results import HeadlineRow, Results, ServedPoint
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, JPEG_QUALITY, PHOTOS, V2, ours
from resnet_mar.quantization import MAX_TOP1_PROBABILITY_ERROR, MIN_TOP1_AGREEMENT
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

Block = list[str]


def markdown_table(header: str, rows: Sequence[Sequence[Any]]) -> Block:
    """A markdown table's lines; ``header`` is its title row, columns separated by " | ". A
    title ending in ">" is right-aligned (numbers); the ">" is not shown."""
    columns = header.split(" | ")
    rules = ["---:" if c.endswith(">") else "---" for c in columns]
    return [
        f"| {' | '.join(c.removesuffix('>') for c in columns)} |",
        f"|{'|'.join(rules)}|",
        *(f"| {' | '.join(map(str, row))} |" for row in rows),
    ]


def rate_and_latency(load: LoadPoint, *quantiles: str) -> list[str]:
    """Requests per second, then each named latency percentile in whole milliseconds."""
    lat = asdict(load.latency_ms)
    return [f"{load.throughput_rps:.1f}", *(f"{lat[q]:.0f}" for q in quantiles)]


def render(results: Results) -> str:
    """The whole report."""
    blocks = [
        *introduction(results),
        *machine_and_load(results),
        *headline_section(headline(results), notes(results)),
        *limit_section(results),
        *compute_section(results),
        *served_section(results),
        *v2_section(results),
        *all_busy_section(results),
        *large_jpeg_section(results),
        ["![throughput and p99 against concurrency](bench.png)"],
    ]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def summary(results: Results) -> list[str]:
    """What the run prints at its end: the headline, the notes and the other load."""
    lines = ["", "Headline (the targets):"]
    for r in headline(results):
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(f"  {verdict}  {r.model:9s} {r.check}: {shown(r.value)} (target {r.target})")
    lines += [f"  info  {note}" for note in notes(results)]
    lines.append(
        f"load average at start {results.load_start}, at end {results.load_end}; "
        f"other processes used at most {busiest_other(results):.2f} cores during a measurement"
    )
    return lines


def introduction(results: Results) -> list[Block]:
    return [
        ["# Benchmark: served ResNets against the in-process limit and the stock setup"],
        [
            f"Run of {results.started}, {results.wall_time_s:.0f} s wall time. Load average "
            f"(1, 5, 15 min) at start {results.load_start}, at end {results.load_end}. "
            "Other work on this machine shares its cores and lowers every figure: the tables "
            "give, for each measurement, the cores other processes used meanwhile (machine CPU "
            "time minus this benchmark's and its server's); the most was "
            f"{busiest_other(results):.2f} cores."
        ],
    ]


def machine_and_load(results: Results) -> list[Block]:
    about = {**asdict(results.machine), **results.versions}
    settings, gate = results.settings, results.settings.int8_gate
    blocks = [
        ["## Machine and versions"],
        markdown_table("item | value", list(about.items())),
        [
            f"Load: closed-loop clients ({', '.join(map(str, settings.concurrencies))}), each "
            f"point {settings.duration_s:.0f} s after a warm-up of at least "
            f"{settings.warmup_s:.0f} s (and until every client had one answer); JPEG photos "
            f"({', '.join(p.name for p in PHOTOS)}; PNGs re-encoded at quality {JPEG_QUALITY}); "
            "untrained weights. Our setups serve all the models from one server, as `make serve` "
            "does (each model measured while the others idle, then all loaded at once); the stock "
            "setup serves each model alone. One server at a time."
        ],
    ]
    if gate is None:  # the run built no int8 model
        return blocks
    return [
        *blocks,
        [
            "The int8 models are built with a relaxed quality gate: top-1 agreement with FP32 >= "
            f"{gate.min_agreement} and top-1 probability error <= {gate.max_error} on the "
            f"held-aside photos, instead of the defaults for trained weights ({MIN_TOP1_AGREEMENT} "
            f"and {MAX_TOP1_PROBABILITY_ERROR}), which untrained networks miss: random weights "
            "exaggerate quantization error (docs/benchmark/int8.md). The gate checks answers, not "
            "speed: a trained model's int8 file has the same graph."
        ],
    ]


def headline_section(rows: Sequence[HeadlineRow], explained: Sequence[str]) -> list[Block]:
    return [
        ["## Headline"],
        markdown_table(
            "check | model | measured> | target | result",
            [
                [r.check, r.model, shown(r.value), r.target, "PASS" if r.passed else "FAIL"]
                for r in rows
            ],
        ),
        [f"- {note}" for note in explained],
    ]


def limit_section(results: Results) -> list[Block]:
    limits = [
        (name, fmt, limit)
        for name, model in results.models.items()
        for fmt, limit in model.in_process.items()
    ]
    batches = sorted({b for _, _, limit in limits for s in limit.img_per_s.values() for b in s})
    return [
        ["## In-process limit (the served file, all cores, inference only)"],
        markdown_table(
            " | ".join(["model | format | input layout", *(f"b{b} img/s>" for b in batches)])
            + " | batch-1 latency ms>",
            [
                [
                    name,
                    fmt,
                    layout,
                    *(f"{speeds[b]:.1f}" for b in batches),
                    f"{limit.batch1_ms[layout]:.1f}",
                ]
                for name, fmt, limit in limits
                for layout, speeds in limit.img_per_s.items()
            ],
        ),
        ["The limit of a file is its best figure above; its batch-1 latency, the best layout's."],
        markdown_table(
            "model | format | limit img/s> | at | batch-1 latency ms> | other load (cores)> | "
            "limit again after serving, img/s>",
            [
                [
                    name,
                    fmt,
                    f"{limit.limit_img_per_s:.1f}",
                    f"batch {limit.best_batch}, {limit.best_layout}",
                    f"{limit.batch1_latency_ms:.1f}",
                    f"{limit.other.other_cores:.2f}",
                    NOT_MEASURED if again is None else f"{again:.1f}",
                ]
                for name, fmt, limit in limits
                for again in [limit.limit_after_img_per_s]
            ],
        ),
        [
            "The limit is measured again at its best batch and layout right after that format's "
            "served measurements; the gap between the two shows how far this machine's speed "
            "moved meanwhile (the cores are shared with other tenants of the host, unseen from "
            "inside)."
        ],
        [
            "Exact preprocessing (decode, resize, crop, normalise, as served), CPU per photo: "
            + ", ".join(
                f"{name} {model.preprocessing_ms:.2f} ms"
                for name, model in results.models.items()
                if model.preprocessing_ms is not None
            )
            + ". The limit leaves it out, but a server spends it on the same cores, so even a "
            "server with no cost of its own could reach at most 1 / (1 / limit + preprocessing / "
            "cores) images per second; the printed notes give that figure and served / it."
        ],
    ]


def compute_section(results: Results) -> list[Block]:
    """Each limit against the machine's FP32 matmul peak, and against one thread."""
    peak = results.fp32_peak
    return [
        ["## Arithmetic: each limit against the FP32 peak and against one thread"],
        [
            f"FP32 matmul peak of this machine: {peak.gflop_per_s:.1f} GFLOP/s ({peak.size} x "
            f"{peak.size} float32 `torch.mm` on {peak.threads} threads, the best of {peak.calls} "
            "calls after a warm-up, measured right before the limits; other load "
            f"{peak.other.other_cores:.2f} cores)."
        ],
        markdown_table(
            "model | format | GFLOP per image> | limit img/s> | limit GFLOP/s> | "
            "share of FP32 peak> | one thread img/s> | thread scaling>",
            [
                [
                    name,
                    fmt,
                    f"{gflop:.2f}",
                    f"{rate:.1f}",
                    f"{rate * gflop:.0f}",
                    f"{share_of_peak(rate, gflop, peak.gflop_per_s):.2f}",
                    f"{limit.one_thread_img_per_s:.1f}",
                    f"{thread_scaling(limit):.2f}",
                ]
                for name, model in results.models.items()
                for fmt, limit in model.in_process.items()
                for gflop, rate in [(model.gflop_per_image, limit.limit_img_per_s)]
            ],
        ),
        [
            "GFLOP per image: `torch.utils.flop_counter` on torchvision's eager model for one "
            "crop, a multiply-add counting 2 (convolutions and classifier; the same for every "
            "format). A limit's share of the peak is its images per second x GFLOP per image / "
            "the peak: how much of the cores' FP32 arithmetic the runtime turns into images. int8 "
            "arithmetic is not bounded by the FP32 peak (int8 instructions, VNNI or AMX, do "
            "several times more operations per cycle), so its share can exceed 1."
        ],
        [
            "One thread: the same file loaded on one thread, at the limit's batch and layout. "
            "Thread scaling = limit / (threads x one thread): 1 when every thread adds a whole "
            "core's worth of images. The further below 1, the more a machine with more cores "
            "would gain from several workers with fewer threads each over one worker with all of "
            'them (README, "Scaling").'
        ],
    ]


def served_section(results: Results) -> list[Block]:
    environment = ", ".join(f"`{k}={v}`" for k, v in WORKER_ENVIRONMENT.items())
    return [
        ["## Served"],
        markdown_table(
            "model | setup | concurrency> | req/s> | p50 ms> | p90 ms> | p99 ms> | errors> | "
            "answers in window> | other load (cores)>",
            [
                [
                    name,
                    label,
                    p.load.concurrency,
                    *rate_and_latency(p.load, "p50", "p90", "p99"),
                    p.load.errors,
                    p.load.requests,
                    f"{p.other.other_cores:.2f}",
                ]
                for name, model in results.models.items()
                for label, served in model.served.items()
                for p in served.points
            ],
        ),
        [
            "Setups: `ours-<format>` = our handler and model-config.yaml with the project's "
            f"config.properties and the workers' environment `make serve` sets ({environment}); "
            "`stock` = the same .pt with `--handler image_classifier`, no model-config, "
            "TorchServe's default config and environment (default_workers_per_model = cores, "
            "batch 1)."
        ],
    ]


def v2_section(results: Results) -> list[Block]:
    """The Open Inference Protocol against /predictions: same archive, server and clients."""
    c = HEADLINE_CONCURRENCY

    def cells(point: ServedPoint | None) -> list[Any]:
        if point is None:
            return [NOT_MEASURED] * 4
        return [*rate_and_latency(point.load, "p50", "p99"), point.load.errors]

    rows = []
    for name, model in results.models.items():
        predictions, v2 = model.point(ours("torchscript"), c), model.point(V2, c)
        ratio = (
            f"{v2.load.throughput_rps / predictions.load.throughput_rps:.2f}"
            if v2 and predictions and predictions.load.throughput_rps
            else NOT_MEASURED
        )
        rows.append([name, "`PUT /predictions/<m>`, raw JPEG", *cells(predictions), ""])
        rows.append([name, "`POST /v2/models/<m>/infer`, JSON, base64", *cells(v2), ratio])
    return [
        [f"## Open Inference Protocol (v2) against /predictions ({c} clients)"],
        markdown_table(
            "model | request | req/s> | p50 ms> | p99 ms> | errors> | v2 / /predictions req/s>",
            rows,
        ),
        [
            f"`{V2}` = our TorchScript archive in the same server settings as "
            "`ours-torchscript` (both models in one server), asked with one photo per request as "
            "the Open Inference Protocol carries it: the JPEG's base64 in a JSON body "
            "(4/3 of its bytes), which the worker parses and base64-decodes before decoding and "
            f"classifying it as any other photo; {c} clients only, measured right after "
            "`ours-torchscript`."
        ],
    ]


def all_busy_section(results: Results) -> list[Block]:
    return [
        ["## All models busy at once (one server, as `make serve` runs them)"],
        markdown_table(
            "setup | model | clients> | req/s> | p50 ms> | p99 ms> | errors> | "
            "share of its alone req/s> | other load (cores)>",
            [
                [
                    label,
                    name,
                    m.load.concurrency,
                    *rate_and_latency(m.load, "p50", "p99"),
                    m.load.errors,
                    f"{m.share_of_alone:.2f}",
                    f"{busy.other.other_cores:.2f}",
                ]
                for label, busy in results.all_busy.items()
                for name, m in busy.models.items()
            ],
        ),
        [
            "Shares add up to about 1 when the models split the machine without loss (the "
            "handler's compute gate makes their batches take turns, each with all cores); threads "
            "of two models running side by side would oversubscribe the cores and add up to far "
            "less."
        ],
    ]


def large_jpeg_section(results: Results) -> list[Block]:
    by_size = {
        name: served.jpeg_size
        for name, model in results.models.items()
        for served in [model.served.get(ours("torchscript"))]
        if served and served.jpeg_size
    }
    ratios = ", ".join(f"{name} {s.p50_ratio_large_over_small:.2f}" for name, s in by_size.items())
    return [
        ["## Large JPEG (our handler, concurrency 1)"],
        markdown_table(
            "model | image | bytes> | p50 ms> | p99 ms>",
            [
                [
                    name,
                    point.pixels,
                    point.bytes,
                    f"{point.load.latency_ms.p50:.1f}",
                    f"{point.load.latency_ms.p99:.1f}",
                ]
                for name, sizes in by_size.items()
                for point in (sizes.small, sizes.large)
            ],
        ),
        [f"p50 ratio 12 MP / 0.3 MP: {ratios}."],
    ]
