"""``python -m resnet_mar.bench``: one run, in the order its measurements must happen, then its
outputs and the headline on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import resnet_mar.bench
from resnet_mar.bench import elapsed_s, headline, progress
from resnet_mar.bench.archives import (
    Workspace,
    archive_floor,
    archive_stock,
    build_and_archive,
)
from resnet_mar.bench.limit import (
    at_best_batch,
    fp32_matmul_peak,
    gflop_per_image,
    in_process_limit,
    preprocessed_photos,
    preprocessing_cost,
)
from resnet_mar.bench.machine import load_average, machine, versions
from resnet_mar.bench.plot import plot
from resnet_mar.bench.report import render, summary
from resnet_mar.bench.results import ModelResults, Results, Settings
from resnet_mar.bench.served import Clients
from resnet_mar.bench.setups import (
    UNTRAINED_INT8_GATE,
    photo_payloads,
    served_setups,
    size_test_payloads,
)
from resnet_mar.export import EXPORTERS
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

MODELS = ("resnet18", "resnet50")
CONCURRENCIES = (1, 4, 16, 64)
#: Every format served on any CPU besides TorchScript (aoti compiles for the build machine).
FORMATS = ("onnx", "openvino", "int8")


def run(args: argparse.Namespace) -> Results:
    """Every build, GFLOP, preprocessing cost, the FP32 peak and every limit first, while no
    server runs (the peak right before the limits it is the yardstick of); then each served
    setup in order, our setups' headline points between two measurements of the bound (the
    machine's speed drifts); last, the empty handler (what TorchServe costs per answer by
    itself)."""
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_average()
    formats = ["torchscript"] + [f for f in args.formats if f in EXPORTERS and f != "torchscript"]
    progress(f"load average {load_start}; formats: {', '.join(formats)}")
    setups, work = served_setups(formats), Workspace(args.work.resolve())
    work.clean()
    payloads = photo_payloads()
    photos = preprocessed_photos(payloads)
    files = {fmt: build_and_archive(work, fmt, args.models) for fmt in formats}
    for setup in setups:
        if setup.stock:
            archive_stock(work, setup.model_format, args.models)
    archive_floor(work, work.model_config(args.models[0]))
    models = {}
    for name in args.models:
        model = models[name] = ModelResults(gflop_per_image(name, photos[0]))
        model.preprocessing_ms = preprocessing_cost(work.model_config(name), payloads)
        progress(
            f"{name}: {model.gflop_per_image} GFLOP per image; exact preprocessing costs "
            f"{model.preprocessing_ms:.2f} ms of CPU per photo"
        )
    peak = fp32_matmul_peak()
    progress(f"FP32 matmul peak: {peak.gflop_per_s:.1f} GFLOP/s on {peak.threads} threads")
    int8_gate = UNTRAINED_INT8_GATE if "int8" in formats else None
    settings = Settings(
        tuple(formats), tuple(args.concurrency), args.duration, args.warmup, int8_gate
    )
    results = Results(started, machine(), versions(), load_start, settings, peak, models)
    for fmt in formats:
        for name, path in files[fmt].items():
            progress(f"{name}: in-process limit of {path.name}")
            models[name].in_process[fmt] = in_process_limit(path, fmt, photos)

    def bound_now(name: str, fmt: str) -> tuple[float, float]:
        first = models[name].in_process[fmt]
        path = files[fmt][name]
        limit = at_best_batch(path, fmt, photos, first.best_batch, first.best_layout)
        return limit, preprocessing_cost(work.model_config(name), payloads)

    clients = Clients(work, payloads, size_test_payloads(), settings, bound_now)
    for setup in setups:
        clients.measure(setup, results)
    results.protocol_floor = clients.protocol_floor()
    results.load_end = load_average()
    results.wall_time_s = round(elapsed_s(), 1)
    results.headline = headline.rows(results)
    return results


def write_outputs(results: Results, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    (out / "report.md").write_text(render(results))
    plot(results, out / "bench.png")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m resnet_mar.bench",
        description=resnet_mar.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--out", type=Path, default=Path("results/bench"))
    root.add_argument("--work", type=Path, default=Path("build/bench"), help="rewritten")
    root.add_argument("--models", nargs="+", default=list(MODELS))
    root.add_argument(
        "--formats",
        nargs="*",
        default=list(FORMATS),
        help="besides torchscript (skipped when not exported); none: torchscript alone",
    )
    root.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    root.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    root.add_argument("--warmup", type=float, default=2.0, help="minimum warm-up per point")
    return root


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    lacking = {k: v for k, v in WORKER_ENVIRONMENT.items() if os.environ.get(k) != v}
    if lacking:
        # The limits must run as the workers run: without GOMP_SPINCOUNT, idle OpenMP threads
        # spin, and under other load the TorchScript limit collapses (every ratio against it
        # would pass). OpenMP reads it when torch loads: start again with it.
        command = [sys.executable, "-m", "resnet_mar.bench", *arguments]
        os.execve(sys.executable, command, {**os.environ, **lacking})
    args = parser().parse_args(arguments)
    results = run(args)
    write_outputs(results, args.out)
    progress(f"wrote {args.out}/report.md, bench.json, bench.png")
    print("\n".join(summary(results)))
    return 0
