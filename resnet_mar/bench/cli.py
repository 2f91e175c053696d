"""``python -m resnet_mar.bench``: one run, in the order its measurements must happen, then its
outputs (``bench.json``, ``report.md``, ``bench.png``) and the headline on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import resnet_mar.bench
from resnet_mar.bench import headline
from resnet_mar.bench.archives import Workspace, archive_stock, build_and_archive
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
from resnet_mar.bench.progress import elapsed_s, progress
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
#: Served besides TorchScript by default: every format the toolkit serves on any CPU (aoti's
#: kernels are compiled for the build machine, and take minutes to build).
FORMATS = ("onnx", "openvino", "int8")


def run(args: argparse.Namespace) -> Results:
    """Every build, each model's GFLOP, the machine's FP32 peak and every in-process limit
    first, while no server runs (the peak right before the limits it is the yardstick of); then
    each served setup in :func:`served_setups`' order, a format's limit measured again right
    after the setups that ask for it (the machine's speed drifts meanwhile)."""
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_average()
    formats = ["torchscript"] + [f for f in args.formats if f in EXPORTERS and f != "torchscript"]
    progress(f"load average {load_start}; formats: {', '.join(formats)}")
    setups = served_setups(formats)
    work = Workspace(args.work.resolve())
    work.clean()
    payloads, sizes = photo_payloads(), size_test_payloads()
    photos = preprocessed_photos(payloads)
    files = {fmt: build_and_archive(work, fmt, args.models) for fmt in formats}
    for setup in setups:
        if setup.archive == "stock":
            archive_stock(work, setup.model_format, args.models)
    gflop = {name: gflop_per_image(name, photos[0]) for name in args.models}
    progress(f"GFLOP per image: {gflop}")
    peak = fp32_matmul_peak()
    progress(f"FP32 matmul peak: {peak.gflop_per_s:.1f} GFLOP/s on {peak.threads} threads")
    results = Results(
        started=started,
        machine=machine(),
        versions=versions(),
        load_start=load_start,
        settings=Settings(
            tuple(formats),
            tuple(args.concurrency),
            args.duration,
            args.warmup,
            UNTRAINED_INT8_GATE if "int8" in formats else None,
        ),
        fp32_peak=peak,
        models={name: ModelResults(gflop[name]) for name in args.models},
    )
    for fmt in formats:
        measure_limits(results, fmt, files[fmt], work, payloads, photos)
    clients = Clients(work, payloads, sizes, results.settings)
    for setup in setups:
        served, all_busy = clients.measure(setup, args.models)
        for name, model in served.items():
            results.models[name].served[setup.label] = model
        if all_busy:
            results.all_busy[setup.label] = all_busy
        if setup.limit_again:
            measure_limits_again(results, setup.model_format, files[setup.model_format], photos)
    results.load_end = load_average()
    results.wall_time_s = round(elapsed_s(), 1)
    results.headline = headline.rows(results)
    return results


def measure_limits(
    results: Results,
    fmt: str,
    files: dict[str, Path],
    work: Workspace,
    payloads: list[bytes],
    photos: torch.Tensor,
) -> None:
    """Each model's in-process limit in ``fmt`` (``files``: its serialized file); and the
    preprocessing cost (once, with TorchScript's model-config)."""
    for name, path in files.items():
        model = results.models[name]
        if fmt == "torchscript":
            config = work.build(fmt) / name / "model-config.yaml"
            cost = model.preprocessing_ms = preprocessing_cost(config, payloads)
            progress(f"{name}: exact preprocessing costs {cost:.2f} ms of CPU per photo")
        progress(f"{name}: in-process limit of {path.name}")
        model.in_process[fmt] = in_process_limit(path, fmt, photos)


def measure_limits_again(
    results: Results, fmt: str, files: dict[str, Path], photos: torch.Tensor
) -> None:
    """Each model's limit in ``fmt`` again, at its best batch and layout, into its results."""
    for name, path in files.items():
        model = results.models[name]
        first = model.in_process[fmt]
        again = at_best_batch(path, fmt, photos, first.best_batch, first.best_layout)
        model.in_process[fmt] = replace(first, limit_after_img_per_s=again)
        progress(f"{name}: in-process limit of {path.name} again: {again:.1f} img/s")


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
        # collapses and recovers when measured again, which would make every ratio against it
        # pass. OpenMP reads it when torch loads: start again with it.
        command = [sys.executable, "-m", "resnet_mar.bench", *arguments]
        os.execve(sys.executable, command, {**os.environ, **lacking})
    args = parser().parse_args(arguments)
    results = run(args)
    write_outputs(results, args.out)
    progress(f"wrote {args.out}/report.md, bench.json, bench.png")
    print("\n".join(summary(results)))
    return 0
