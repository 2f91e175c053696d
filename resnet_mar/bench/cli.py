"""``python -m resnet_mar.bench``: one run, in the order its measurements must happen, then its
outputs (``bench.json``, ``report.md``, ``bench.png``) and the headline on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import resnet_mar.bench
from resnet_mar.bench.archives import Workspace, archive_stock, build_and_archive
from resnet_mar.bench.compute import fp32_matmul_peak, gflop_per_image
from resnet_mar.bench.inputs import photo_payloads, size_test_payloads
from resnet_mar.bench.limit import (
    in_process_limit,
    limit_again,
    one_thread_limit,
    preprocessed_photos,
    preprocessing_cost,
)
from resnet_mar.bench.machine import load_average, machine, versions
from resnet_mar.bench.plot import plot
from resnet_mar.bench.progress import elapsed_s, progress
from resnet_mar.bench.report import render, summary
from resnet_mar.bench.results import ModelResults, Results, Settings
from resnet_mar.bench.served import LoadSettings, measure_setup
from resnet_mar.bench.setups import UNTRAINED_INT8_GATE, ServedSetup, served_setups
from resnet_mar.bench.targets import headline
from resnet_mar.export import EXPORTERS
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

MODELS = ("resnet18", "resnet50")
CONCURRENCIES = (1, 4, 16, 64)
#: Served besides TorchScript by default: every format the toolkit serves on any CPU (aoti's
#: kernels are compiled for the build machine, and take minutes to build).
FORMATS = ("onnx", "openvino", "int8")


def run(args: argparse.Namespace) -> Results:
    """Every build, the machine's FP32 peak, each model's GFLOP and every in-process limit
    first, while no server runs; then each served setup in :func:`served_setups`' order, a
    format's limit measured again right after the setups that ask for it (the machine's speed
    drifts meanwhile)."""
    formats = ["torchscript"] + [f for f in args.formats if f in EXPORTERS and f != "torchscript"]
    setups = served_setups(formats)
    work = Workspace(args.work.resolve())
    work.clean()
    load = LoadSettings(tuple(args.concurrency), args.duration, args.warmup)
    results = Results(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=machine(),
        versions=versions(),
        load_start=load_average(),
        settings=Settings(
            tuple(formats),
            load.concurrencies,
            load.duration_s,
            load.warmup_s,
            UNTRAINED_INT8_GATE if "int8" in formats else None,
        ),
        models={name: ModelResults() for name in args.models},
    )
    progress(f"load average {results.load_start}; formats: {', '.join(formats)}")
    payloads = photo_payloads()
    photos = preprocessed_photos(payloads)
    sizes = size_test_payloads()

    files = {fmt: build_all(work, fmt, setups, list(results.models)) for fmt in formats}
    measure_compute(results, photos)
    for fmt in formats:
        measure_limits(work, fmt, files[fmt], results, payloads, photos)
    for setup in setups:
        measured = measure_setup(setup, work, list(args.models), payloads, load, sizes)
        for name, served in measured.models.items():
            results.models[name].served[setup.label] = served
        if measured.all_busy:
            results.all_busy[setup.label] = measured.all_busy
        if setup.limit_again:
            measure_limits_again(results, setup.model_format, files[setup.model_format], photos)

    results.load_end = load_average()
    results.wall_time_s = round(elapsed_s(), 1)
    return results


def build_all(
    work: Workspace, fmt: str, setups: list[ServedSetup], models: list[str]
) -> dict[str, Path]:
    """Build and archive every model in ``fmt`` (ours, and stock if a setup serves it).
    Returns each model's serialized file."""
    files = build_and_archive(work, fmt, models)
    if any(s.archive == "stock" and s.model_format == fmt for s in setups):
        archive_stock(work, fmt, models)
    return files


def measure_compute(results: Results, photos: torch.Tensor) -> None:
    """The machine's FP32 matmul peak, right before the limits it is the yardstick of, and the
    GFLOP one image asks of each model."""
    peak = results.fp32_peak = fp32_matmul_peak()
    progress(f"FP32 matmul peak: {peak.gflop_per_s:.1f} GFLOP/s on {peak.threads} threads")
    for name, model in results.models.items():
        model.gflop_per_image = gflop_per_image(name, photos[0])
        progress(f"{name}: {model.gflop_per_image:.3f} GFLOP per image")


def measure_limits(
    work: Workspace,
    fmt: str,
    files: dict[str, Path],
    results: Results,
    payloads: list[bytes],
    photos: torch.Tensor,
) -> None:
    """Each model's in-process limit in ``fmt`` (``files``: its serialized file), then the same
    file on one thread at the limit's batch and layout; and the preprocessing cost (once, with
    TorchScript's model-config)."""
    for name, path in files.items():
        model = results.models[name]
        if fmt == "torchscript":
            config = work.build(fmt) / name / "model-config.yaml"
            cost = model.preprocessing_ms = preprocessing_cost(config, payloads)
            progress(f"{name}: exact preprocessing costs {cost:.2f} ms of CPU per photo")
        progress(f"{name}: in-process limit of {path.name}")
        limit = in_process_limit(path, fmt, photos)
        one = one_thread_limit(path, fmt, photos, limit)
        model.in_process[fmt] = replace(limit, one_thread_img_per_s=one)
        progress(
            f"{name}: {path.name} on one thread: {one:.1f} img/s "
            f"(all {limit.threads}: {limit.limit_img_per_s:.1f})"
        )


def measure_limits_again(
    results: Results, fmt: str, files: dict[str, Path], photos: torch.Tensor
) -> None:
    """Each model's limit in ``fmt`` again, at its best batch and layout, into its results."""
    for name, model_file in files.items():
        model = results.models[name]
        first = model.in_process[fmt]
        after = limit_again(model_file, fmt, photos, first)
        model.in_process[fmt] = replace(first, limit_after_img_per_s=after)
        progress(
            f"{name}: in-process limit of {model_file.name} again: "
            f"{after:.1f} img/s (first {first.limit_img_per_s:.1f})"
        )


def write_outputs(results: Results, out: Path) -> None:
    """``bench.json`` (with the headline as checked now), ``report.md`` and ``bench.png``."""
    out.mkdir(parents=True, exist_ok=True)
    document = results.to_json(headline(results))
    (out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "report.md").write_text(render(results))
    plot(results, out / "bench.png")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m resnet_mar.bench",
        description=resnet_mar.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--out", type=Path, default=Path("results/bench"))
    root.add_argument(
        "--work",
        type=Path,
        default=Path("build/bench"),
        help="builds, archives and server logs of the run (rewritten)",
    )
    root.add_argument("--models", nargs="+", default=list(MODELS))
    root.add_argument(
        "--formats",
        nargs="*",
        default=list(FORMATS),
        help="formats served besides torchscript (skipped when the toolkit does not export "
        "them); none: torchscript alone",
    )
    root.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    root.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    root.add_argument("--warmup", type=float, default=2.0, help="minimum warm-up per point")
    return root


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    lacking = {k: v for k, v in WORKER_ENVIRONMENT.items() if os.environ.get(k) != v}
    if lacking:
        # The in-process limits must run as the workers run: without GOMP_SPINCOUNT, torch's
        # idle OpenMP threads spin for milliseconds, and under other load the TorchScript limit
        # collapses (measured: 16.5 img/s, then 76.2 measured again), which would make every
        # ratio against it pass. OpenMP reads it when torch loads: start again with it.
        command = [sys.executable, "-m", "resnet_mar.bench", *arguments]
        os.execve(sys.executable, command, {**os.environ, **lacking})
    args = parser().parse_args(arguments)
    results = run(args)
    write_outputs(results, args.out)
    progress(f"wrote {args.out}/report.md, bench.json, bench.png")
    print("\n".join(summary(results)))
    return 0
