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

from resnet_mar.bench.inputs import JPEG_QUALITY, PHOTOS
from resnet_mar.bench.notes import busiest_other, notes
from resnet_mar.bench.results import HeadlineRow, InProcessLimit, JpegSizes, Results
from resnet_mar.bench.setups import ours
from resnet_mar.bench.targets import NOT_MEASURED, headline, shown
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

Block = list[str]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Block:
    """A markdown table's lines. A column title ending in ">" is right-aligned (numbers); the
    ">" is not shown."""
    titles = [c.removesuffix(">") for c in columns]
    rules = ["---:" if c.endswith(">") else "---" for c in columns]
    return [
        f"| {' | '.join(titles)} |",
        f"|{'|'.join(rules)}|",
        *(f"| {' | '.join(map(str, row))} |" for row in rows),
    ]


def render(results: Results) -> str:
    """The whole report."""
    blocks = [
        *introduction(results),
        *machine_and_load(results),
        *headline_section(headline(results), notes(results)),
        *limit_section(results),
        *served_section(results),
        *all_busy_section(results),
        *large_jpeg_section(results),
        ["![throughput and p99 against concurrency](bench.png)"],
    ]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def summary(results: Results) -> list[str]:
    """What the run prints at its end: the headline, the notes and the other load."""
    lines = ["", "Headline (targets of issue 4):"]
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
    settings = results.settings
    return [
        ["## Machine and versions"],
        markdown_table(["item", "value"], [[k, v] for k, v in about.items()]),
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


def headline_section(rows: Sequence[HeadlineRow], explained: Sequence[str]) -> list[Block]:
    return [
        ["## Headline"],
        markdown_table(
            ["check", "model", "measured>", "target", "result"],
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
    return [
        ["## In-process limit (the served file, all cores, inference only)"],
        limits_by_batch(limits),
        ["The limit of a file is its best figure above; its batch-1 latency, the best layout's."],
        markdown_table(
            [
                "model",
                "format",
                "limit img/s>",
                "at",
                "batch-1 latency ms>",
                "other load (cores)>",
                "limit again after serving, img/s>",
            ],
            [
                [
                    name,
                    fmt,
                    f"{limit.limit_img_per_s:.1f}",
                    f"batch {limit.best_batch}, {limit.best_layout}",
                    f"{limit.batch1_latency_ms:.1f}",
                    f"{limit.other.other_cores:.2f}",
                    NOT_MEASURED
                    if limit.limit_after_img_per_s is None
                    else f"{limit.limit_after_img_per_s:.1f}",
                ]
                for name, fmt, limit in limits
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


def limits_by_batch(limits: Sequence[tuple[str, str, InProcessLimit]]) -> Block:
    """Images per second of each file at each batch size, one row per input layout."""
    batches = sorted({b for _, _, limit in limits for s in limit.img_per_s.values() for b in s})
    return markdown_table(
        [
            "model",
            "format",
            "input layout",
            *(f"b{b} img/s>" for b in batches),
            "batch-1 latency ms>",
        ],
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
    )


def served_section(results: Results) -> list[Block]:
    environment = ", ".join(f"`{k}={v}`" for k, v in WORKER_ENVIRONMENT.items())
    return [
        ["## Served"],
        markdown_table(
            [
                "model",
                "setup",
                "concurrency>",
                "req/s>",
                "p50 ms>",
                "p90 ms>",
                "p99 ms>",
                "errors>",
                "answers in window>",
                "other load (cores)>",
            ],
            [
                [
                    name,
                    label,
                    p.load.concurrency,
                    f"{p.load.throughput_rps:.1f}",
                    *(f"{q:.0f}" for q in (lat.p50, lat.p90, lat.p99)),
                    p.load.errors,
                    p.load.requests,
                    f"{p.other.other_cores:.2f}",
                ]
                for name, model in results.models.items()
                for label, served in model.served.items()
                for p in served.points
                for lat in [p.load.latency_ms]
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


def all_busy_section(results: Results) -> list[Block]:
    return [
        ["## All models busy at once (one server, as `make serve` runs them)"],
        markdown_table(
            [
                "setup",
                "model",
                "clients>",
                "req/s>",
                "p50 ms>",
                "p99 ms>",
                "errors>",
                "share of its alone req/s>",
                "other load (cores)>",
            ],
            [
                [
                    label,
                    name,
                    m.load.concurrency,
                    f"{m.load.throughput_rps:.1f}",
                    f"{m.load.latency_ms.p50:.0f}",
                    f"{m.load.latency_ms.p99:.0f}",
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
    by_size: dict[str, JpegSizes] = {}
    for name, model in results.models.items():
        served = model.served.get(ours("torchscript"))
        if served and served.jpeg_size:
            by_size[name] = served.jpeg_size
    ratios = ", ".join(f"{name} {s.p50_ratio_large_over_small:.2f}" for name, s in by_size.items())
    return [
        ["## Large JPEG (our handler, concurrency 1)"],
        markdown_table(
            ["model", "image", "bytes>", "p50 ms>", "p99 ms>"],
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
