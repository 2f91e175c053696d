"""``make bench``: how close the served model gets to the machine's limit, and to the stock setup.

For each model (untrained weights: speed does not depend on them) one run measures, side by side:

* the in-process limit: the very file the server serves, loaded in this process as our handler
  loads it but with all cores, fed preprocessed photos at batch sizes 1..16 (TorchScript in
  both input layouts), no server, no decoding -- the ceiling any serving setup can reach here;
* our served model (our handler, our model-config.yaml, the project's config.properties,
  the workers' environment ``make serve`` sets);
* the stock setup: the same ``.pt`` archived with ``--handler image_classifier`` and no
  model-config, served by TorchServe's default configuration (only loopback addresses, free
  ports and no token authorization changed);
* the same for every other format the toolkit exports (FORMAT=onnx when it exists);
* the cost of a 12-megapixel JPEG against a 0.3-megapixel one, at concurrency 1;
* the CPU the handler's exact preprocessing costs per photo (which the limit leaves out), and
  each limit again after the served measurements (the machine's speed drifts).

Our setups serve every model from one server, as ``make serve`` does: each model is measured
while the others idle, then all of them are loaded at once (the models must share the machine,
not collapse). The stock setup serves each model alone. One server runs at a time and is always
stopped; the load comes from :mod:`resnet_mar.load_client` (closed loop, real JPEG photos,
loopback only). Outputs:
``report.md`` (tables and the headline ratios), ``bench.json`` (every raw number) and
``bench.png`` (throughput and p99 against concurrency).

The process exits 0 when a target is missed (this is a report); it fails only when the run breaks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib
import psutil
import skimage.data
import torch
import yaml
from PIL import Image

from resnet_mar.build import BuildRequest, build_model
from resnet_mar.export import EXPORTERS, JIT_DEPRECATION
from resnet_mar.load_client import LoadPoint, run_point
from resnet_mar.torchserve import REPO_ROOT, RunningServer, private_server
from resnet_mar.weights import STANDARD_IMAGENET, UNTRAINED
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

MODELS = ("resnet18", "resnet50")
CONCURRENCIES = (1, 4, 16, 64)
BATCH_SIZES = (1, 2, 4, 8, 16)
#: The headline compares every setup at this concurrency.
HEADLINE_CONCURRENCY = 16

SKIMAGE_DATA = Path(skimage.data.__file__).parent
PHOTOS = (
    SKIMAGE_DATA / "chelsea.png",
    SKIMAGE_DATA / "coffee.png",
    SKIMAGE_DATA / "astronaut.png",
    SKIMAGE_DATA / "rocket.jpg",
    Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
)
#: Source of the large/small JPEG pair, both stretched to 4:3 as a phone photo is.
SIZE_TEST_PHOTO = SKIMAGE_DATA / "coffee.png"
LARGE_JPEG_SIZE = (4000, 3000)
SMALL_JPEG_SIZE = (640, 480)
JPEG_QUALITY = 90

#: TorchServe's defaults, but for what a benchmark on a shared machine must change: loopback
#: addresses (moved to free ports by ``private_server``) and no token (requests carry none).
STOCK_CONFIG = """\
inference_address=http://127.0.0.1:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
disable_token_authorization=true
"""

#: Targets of issue 4; each headline row says which it checks.
TARGET_SERVED_OVER_LIMIT = 0.85
TARGET_OURS_OVER_STOCK = 4.0
TARGET_C1_OVERHEAD_MS = 10.0
TARGET_ONNX_OVER_TORCHSCRIPT = 1.5

_STARTED = time.monotonic()


def progress(message: str) -> None:
    elapsed = int(time.monotonic() - _STARTED)
    print(f"[bench {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


# --- inputs -------------------------------------------------------------------------------------


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def photo_payloads() -> list[bytes]:
    """The request bodies: JPEG files as they are, PNGs re-encoded to JPEG in memory (clients
    send JPEG photos; a PNG would make decoding, not the model, the cost being measured)."""
    missing = [str(p) for p in PHOTOS if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark photos missing (run 'make setup'): {missing}")
    return [p.read_bytes() if p.suffix == ".jpg" else jpeg_bytes(Image.open(p)) for p in PHOTOS]


def size_test_payloads() -> dict[str, bytes]:
    photo = Image.open(SIZE_TEST_PHOTO).convert("RGB")
    return {
        "large": jpeg_bytes(photo.resize(LARGE_JPEG_SIZE, Image.Resampling.BICUBIC)),
        "small": jpeg_bytes(photo.resize(SMALL_JPEG_SIZE, Image.Resampling.BICUBIC)),
    }


def preprocessed_photos() -> torch.Tensor:
    """The photos as the model sees them (torchvision's ImageNet transform), stacked."""
    transform = STANDARD_IMAGENET.to_transforms()
    return torch.stack(
        [transform(Image.open(io.BytesIO(p)).convert("RGB")) for p in photo_payloads()]
    )


def batch_of(photos: torch.Tensor, size: int) -> torch.Tensor:
    return photos[torch.arange(size) % len(photos)].contiguous()


# --- builds and archives ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """Where one run keeps its builds, archives and server folders (rewritten every run).

    ``root`` must be absolute: TorchServe runs in its server folder and resolves paths there."""

    root: Path

    def build(self, model_format: str) -> Path:
        return self.root / model_format / "build"

    def store(self, model_format: str) -> Path:
        return self.root / model_format / "model_store"

    @property
    def stock_store(self) -> Path:
        return self.root / "stock" / "model_store"

    def server(self, label: str) -> Path:
        return self.root / "servers" / label

    def clean(self) -> None:
        """Remove what an earlier run left (only the folders this class names)."""
        for folder in (*EXPORTERS, "stock", "servers"):
            shutil.rmtree(self.root / folder, ignore_errors=True)


def build_and_archive(work: Workspace, model_format: str, models: list[str]) -> dict[str, Path]:
    """Build each model as ``make script`` does (weights none, served alone: all cores) and pack
    our archive with ``archive.sh``; the serialized file of each model is returned."""
    files = {}
    for name in models:
        progress(f"building {name} ({model_format}, untrained weights, served alone)")
        request = BuildRequest(
            architecture=name,
            weights=UNTRAINED,
            model_format=model_format,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
            files[name] = build_model(request, work.build(model_format)).model_file
    progress(f"archiving {', '.join(models)} ({model_format}) with archive.sh")
    run_quietly(
        [
            str(REPO_ROOT / "archive.sh"),
            "-b",
            str(work.build(model_format)),
            "-s",
            str(work.store(model_format)),
            *models,
        ]
    )
    return files


def archive_stock(work: Workspace, model_format: str, models: list[str]) -> None:
    """The stock setup: the same serialized file and label map, TorchServe's own handler,
    no model-config (so TorchServe's defaults decide workers and batching)."""
    work.stock_store.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    for name in models:
        progress(f"archiving {name} for the stock setup (--handler image_classifier)")
        suffix = EXPORTERS[model_format][0]
        run_quietly(
            [
                str(archiver),
                "--model-name",
                name,
                "--version",
                "1.0",
                "--serialized-file",
                str(work.build(model_format) / f"{name}{suffix}"),
                "--handler",
                "image_classifier",
                "--extra-files",
                str(work.build(model_format) / name / "index_to_name.json"),
                "--export-path",
                str(work.stock_store),
                "--force",
            ]
        )


def run_quietly(command: list[str]) -> None:
    """Run a tool; on failure, raise with its output (a broken run must not look like a result)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )


# --- other work on the machine -------------------------------------------------------------------


@dataclass(frozen=True)
class CpuCounters:
    """CPU seconds so far: the whole machine's, the hypervisor's steal, and ours (this process
    plus the server's process tree)."""

    at: float
    machine_busy: float
    steal: float
    ours: float


def cpu_counters(server_pid: int | None = None) -> CpuCounters:
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + times.irq + times.softirq
    processes = [psutil.Process()]
    if server_pid is not None:
        with contextlib.suppress(psutil.NoSuchProcess):
            server = psutil.Process(server_pid)
            processes += [server, *server.children(recursive=True)]
    ours = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            spent = process.cpu_times()
            ours += spent.user + spent.system
    return CpuCounters(time.monotonic(), busy, times.steal, ours)


def other_load(before: CpuCounters, after: CpuCounters) -> dict[str, float]:
    """Cores used by other work between two samples (other engineers' tests share this
    machine), and cores the hypervisor gave elsewhere (steal): a figure measured while either
    is well above zero is lower than this machine's."""
    elapsed = max(after.at - before.at, 1e-9)
    others = (after.machine_busy - before.machine_busy) - (after.ours - before.ours)
    return {
        "other_cores": round(max(0.0, others) / elapsed, 2),
        "steal_cores": round((after.steal - before.steal) / elapsed, 2),
    }


# --- the in-process limit -----------------------------------------------------------------------

Forward = Callable[[torch.Tensor], torch.Tensor]


def handler_module(name: str) -> ModuleType:
    """A module of ``handlers/`` as TorchServe imports it. handlers/ is not a package: inside an
    archive its modules import each other by bare name, so the folder goes on ``sys.path`` (at
    the end, where it shadows nothing)."""
    folder = str(REPO_ROOT / "handlers")
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(name)


def load_in_process(model_file: Path, model_format: str) -> Forward:
    """The served file, loaded as our handler loads it, on every core of this machine."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        load_model = handler_module("model_runtimes").load_model
        model = load_model(str(model_file), model_format, os.cpu_count() or 1)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return forward


#: Input layouts the in-process limit tries: the handler feeds TorchScript channels-last batches
#: from 3 images up (faster there), so a limit measured in NCHW alone would not be a limit.
LAYOUTS = {
    "torchscript": {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last},
}


def call_times(
    forward: Forward, batch: torch.Tensor, *, min_time_s: float, min_calls: int
) -> list[float]:
    """Seconds per forward pass over at least ``min_time_s`` and ``min_calls`` calls, after
    two unmeasured ones (TorchScript profiles, then optimises, each new input)."""
    for _ in range(2):
        forward(batch)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - began < min_time_s:
        start = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - start)
    return times


def limit_again(
    model_file: Path, model_format: str, photos: torch.Tensor, limit: dict[str, Any]
) -> float:
    """The limit re-measured at its best batch and layout, after the served measurements: this
    machine's speed drifts (other tenants of the host), so the report shows by how much the
    reference moved while the server was measured against it."""
    forward = load_in_process(model_file, model_format)
    layouts = LAYOUTS.get(model_format, {"contiguous": torch.contiguous_format})
    batch = batch_of(photos, limit["best_batch"])
    batch = batch.contiguous(memory_format=layouts[limit["best_layout"]])
    times = call_times(forward, batch, min_time_s=2.0, min_calls=3)
    return round(limit["best_batch"] * len(times) / sum(times), 2)


def in_process_limit(
    model_file: Path,
    model_format: str,
    photos: torch.Tensor,
    *,
    min_time_s: float = 1.0,
    min_calls: int = 3,
) -> dict[str, Any]:
    """Images per second at each batch size and input layout (inference only, preprocessed
    photos); the best of them is the limit. Also the median batch-1 latency of each layout."""
    forward = load_in_process(model_file, model_format)
    layouts = LAYOUTS.get(model_format, {"contiguous": torch.contiguous_format})
    img_per_s: dict[str, dict[str, float]] = {layout: {} for layout in layouts}
    batch1_ms: dict[str, float] = {}
    for size in BATCH_SIZES:
        for layout, memory_format in layouts.items():
            batch = batch_of(photos, size).contiguous(memory_format=memory_format)
            times = call_times(forward, batch, min_time_s=min_time_s, min_calls=min_calls)
            img_per_s[layout][str(size)] = round(size * len(times) / sum(times), 2)
            if size == 1:
                batch1_ms[layout] = round(statistics.median(times) * 1000, 2)
        measured = ", ".join(f"{layout} {img_per_s[layout][str(size)]:.1f}" for layout in layouts)
        progress(f"  {model_file.name} batch {size:2d}: img/s {measured}")
    best_layout, best_batch = max(
        ((layout, size) for layout in layouts for size in img_per_s[layout]),
        key=lambda key: img_per_s[key[0]][key[1]],
    )
    return {
        "file": model_file.name,
        "threads": os.cpu_count(),
        "img_per_s": img_per_s,
        "batch1_ms": batch1_ms,
        "limit_img_per_s": img_per_s[best_layout][best_batch],
        "best_batch": int(best_batch),
        "best_layout": best_layout,
        "batch1_latency_ms": min(batch1_ms.values()),
    }


def preprocessing_cost(
    model_config: Path, payloads: list[bytes], *, min_time_s: float = 2.0
) -> float:
    """Milliseconds of CPU per image for what the handler does before the model, exactly as
    served: decode, resize and crop (``decode_request``), then normalise (``model_input``), in
    batches of 8. The in-process limit leaves this out, yet a server spends it on the same
    cores. Measured on one torch thread, so that no idle OpenMP thread's spinning is counted."""
    handler = handler_module("resnet_handler")
    config = yaml.safe_load(model_config.read_text())["handler"]
    settings = handler_module("handler_settings").HandlerSettings.from_config(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bodies = [payloads[i % len(payloads)] for i in range(8)]
    try:
        images = 0
        began = time.process_time()
        while images < 16 or time.process_time() - began < min_time_s:
            crops = [handler.decode_request({"body": body}, {}, settings, 1)[0] for body in bodies]
            handler.model_input(crops, settings)
            images += len(crops)
        return round((time.process_time() - began) / images * 1000, 3)
    finally:
        torch.set_num_threads(threads)


def attainable_img_per_s(limit_img_per_s: float, preprocessing_ms: float, cores: int) -> float:
    """The most images per second the limit's cores can classify when each image also costs
    ``preprocessing_ms`` of CPU: the time per image of both, with that CPU spread over the cores."""
    return 1 / (1 / limit_img_per_s + preprocessing_ms / 1000 / cores)


# --- served -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSettings:
    concurrencies: tuple[int, ...]
    duration_s: float
    warmup_s: float


def serve_and_measure(
    label: str,
    model_store: Path,
    names: list[str],
    workdir: Path,
    config_text: str | None,
    worker_environment: Mapping[str, str],
    payloads: list[bytes],
    load: LoadSettings,
    *,
    size_payloads: dict[str, bytes] | None = None,
    all_busy: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Start one server holding ``names``, sweep the concurrencies for each model in turn while
    the others idle, optionally time the large and small JPEGs at concurrency 1 and load every
    model at once, and stop the server. Returns each model's figures and the all-busy point."""
    progress(f"{', '.join(names)} [{label}]: starting TorchServe")
    began = time.monotonic()
    per_model: dict[str, dict[str, Any]] = {}
    together = None
    with private_server(
        model_store,
        names,
        workdir=workdir,
        config_text=config_text,
        worker_environment=worker_environment,
    ) as server:
        startup_s = round(time.monotonic() - began, 1)
        progress(f"{', '.join(names)} [{label}]: READY after {startup_s} s")
        for name in names:
            result: dict[str, Any] = {"startup_s": startup_s, "points": []}
            for concurrency in load.concurrencies:
                before = cpu_counters(server.process.pid)
                point = run_point(
                    server.endpoints.inference,
                    name,
                    payloads,
                    concurrency,
                    duration_s=load.duration_s,
                    warmup_s=load.warmup_s,
                )
                others = other_load(before, cpu_counters(server.process.pid))
                result["points"].append({**point.as_dict(), **others})
                progress(f"{name} [{label}] {describe(point)}  other load {others['other_cores']}")
            if size_payloads:
                result["jpeg_size"] = measure_jpeg_sizes(
                    server.endpoints.inference, name, size_payloads
                )
            per_model[name] = result
        if all_busy and len(names) > 1:
            together = measure_all_busy(server, label, names, payloads, load, per_model)
    progress(f"{', '.join(names)} [{label}]: server stopped")
    return per_model, together


def measure_all_busy(
    server: RunningServer,
    label: str,
    names: list[str],
    payloads: list[bytes],
    load: LoadSettings,
    alone: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every model of the server loaded at once, each by its own clients. A model's share is
    its throughput now over its throughput alone: the shares add up to 1 when the models split
    the machine without loss, and fall far below when their threads oversubscribe the cores."""
    c = HEADLINE_CONCURRENCY

    def load_one(name: str) -> LoadPoint:
        return run_point(
            server.endpoints.inference,
            name,
            payloads,
            c,
            duration_s=load.duration_s,
            warmup_s=load.warmup_s,
        )

    before = cpu_counters(server.process.pid)
    with ThreadPoolExecutor(max_workers=len(names)) as clients:  # re-raises a client's failure
        points = dict(zip(names, clients.map(load_one, names), strict=True))
    others = other_load(before, cpu_counters(server.process.pid))
    found: dict[str, Any] = {"concurrency_per_model": c, "models": {}, **others}
    for name in names:
        point = points[name]
        alone_at_c = point_at(alone[name]["points"], c)
        share = point.throughput_rps / alone_at_c["throughput_rps"] if alone_at_c else 0.0
        found["models"][name] = {**point.as_dict(), "share_of_alone": round(share, 3)}
        progress(f"{name} [{label}, all busy] {describe(point)}  share of alone {share:.2f}")
    found["shares_sum"] = round(sum(m["share_of_alone"] for m in found["models"].values()), 3)
    return found


def describe(point: LoadPoint) -> str:
    lat = point.latency_ms
    return (
        f"c={point.concurrency:<3d} {point.throughput_rps:6.1f} req/s  p50 {lat['p50']:7.1f} ms  "
        f"p90 {lat['p90']:7.1f} ms  p99 {lat['p99']:7.1f} ms  errors {point.errors}"
    )


def measure_jpeg_sizes(url: str, name: str, payloads: dict[str, bytes]) -> dict[str, Any]:
    """Latency at concurrency 1 of a 12-megapixel JPEG against a 0.3-megapixel one."""
    found: dict[str, Any] = {}
    for which in ("small", "large"):
        point = run_point(url, name, [payloads[which]], 1, duration_s=5.0, warmup_s=1.0)
        size = SMALL_JPEG_SIZE if which == "small" else LARGE_JPEG_SIZE
        found[which] = {
            "pixels": f"{size[0]}x{size[1]}",
            "bytes": len(payloads[which]),
            **point.as_dict(),
        }
        progress(f"{name} {which} JPEG {size[0]}x{size[1]}: {describe(point)}")
    found["p50_ratio_large_over_small"] = round(
        found["large"]["latency_ms"]["p50"] / found["small"]["latency_ms"]["p50"], 2
    )
    return found


# --- machine, headline, report ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "torchserve", "torch-model-archiver", "onnxruntime"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    found["java"] = (java.stderr or java.stdout).splitlines()[0] if java.returncode == 0 else "?"
    return found


def point_at(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((p for p in points if p["concurrency"] == concurrency), None)


def headline(results: dict[str, Any], formats: list[str]) -> list[dict[str, Any]]:
    """The issue's targets, one row per model (and served format) they apply to."""
    rows: list[dict[str, Any]] = []

    def row(check: str, model: str, value: float, target: str, passed: bool) -> None:
        rows.append(
            {
                "check": check,
                "model": model,
                "value": round(value, 3),
                "target": target,
                "passed": bool(passed),
            }
        )

    c = HEADLINE_CONCURRENCY
    for name, model in results["models"].items():
        for fmt in formats:
            served = model["served"].get(f"ours-{fmt}")
            limit = model["in_process"].get(fmt)
            if not served or not limit:
                continue
            at_c = point_at(served["points"], c)
            at_1 = point_at(served["points"], 1)
            if at_c:
                ratio = at_c["throughput_rps"] / limit["limit_img_per_s"]
                row(
                    f"served c{c} / in-process limit ({fmt})",
                    name,
                    ratio,
                    f">= {TARGET_SERVED_OVER_LIMIT}",
                    ratio >= TARGET_SERVED_OVER_LIMIT,
                )
            if at_1:
                overhead = at_1["latency_ms"]["p50"] - limit["batch1_latency_ms"]
                row(
                    f"p50 c1 - in-process batch-1 latency, ms ({fmt})",
                    name,
                    overhead,
                    f"<= {TARGET_C1_OVERHEAD_MS}",
                    overhead <= TARGET_C1_OVERHEAD_MS,
                )
            busy = results["all_busy"].get(f"ours-{fmt}", {}).get("models", {}).get(name, {})
            errors = sum(p["errors"] for p in served["points"]) + busy.get("errors", 0)
            row(
                f"errors, c <= {max(p['concurrency'] for p in served['points'])} ({fmt})",
                name,
                errors,
                "0",
                errors == 0,
            )
        ours = point_at(model["served"].get("ours-torchscript", {}).get("points", []), c)
        stock = point_at(model["served"].get("stock", {}).get("points", []), c)
        if ours and stock:
            ratio = ours["throughput_rps"] / stock["throughput_rps"]
            row(
                f"ours / stock throughput at c{c}",
                name,
                ratio,
                f">= {TARGET_OURS_OVER_STOCK}",
                ratio >= TARGET_OURS_OVER_STOCK,
            )
        onnx = point_at(model["served"].get("ours-onnx", {}).get("points", []), c)
        if onnx and ours and name == "resnet50":
            ratio = onnx["throughput_rps"] / ours["throughput_rps"]
            row(
                f"served onnx / served torchscript at c{c}",
                name,
                ratio,
                f">= {TARGET_ONNX_OVER_TORCHSCRIPT}",
                ratio >= TARGET_ONNX_OVER_TORCHSCRIPT,
            )
    return rows


def notes(results: dict[str, Any]) -> list[str]:
    """Figures without a target that explain the headline: the served throughput against an
    NCHW-only limit (what a plain ``torch.jit.load`` loop reaches), against the limit with exact
    preprocessing added and against the limit measured again after serving, the 12 MP / 0.3 MP
    latency ratio, and how much CPU the load generator itself took from the server."""
    found = []
    c = HEADLINE_CONCURRENCY
    for name, model in results["models"].items():
        ours = model["served"].get("ours-torchscript", {})
        at_c = point_at(ours.get("points", []), c)
        limit = model["in_process"].get("torchscript")
        if at_c and limit:
            nchw = max(limit["img_per_s"]["contiguous"].values())
            found.append(
                f"{name}: served c{c} / NCHW-only in-process limit ({nchw:.1f} img/s) = "
                f"{at_c['throughput_rps'] / nchw:.2f}"
            )
        for fmt, limit in model["in_process"].items():
            served = point_at(model["served"].get(f"ours-{fmt}", {}).get("points", []), c)
            if served and "preprocessing_ms" in model:
                cap = attainable_img_per_s(
                    limit["limit_img_per_s"], model["preprocessing_ms"], limit["threads"]
                )
                found.append(
                    f"{name}: {fmt} limit with exact preprocessing on the same cores = "
                    f"{cap:.1f} img/s ({cap / limit['limit_img_per_s']:.2f} of the limit); "
                    f"served c{c} / it = {served['throughput_rps'] / cap:.2f}"
                )
            if served and "limit_after_img_per_s" in limit:
                after = limit["limit_after_img_per_s"]
                found.append(
                    f"{name}: {fmt} limit measured again after serving: {after:.1f} img/s "
                    f"({after / limit['limit_img_per_s']:.0%} of the first); served c{c} / it = "
                    f"{served['throughput_rps'] / after:.2f}"
                )
        if "jpeg_size" in ours:
            ratio = ours["jpeg_size"]["p50_ratio_large_over_small"]
            found.append(f"{name}: p50 at c1 of a 12 MP JPEG / a 0.3 MP JPEG = {ratio:.2f}")
    for label, busy in results["all_busy"].items():
        rates = " + ".join(
            f"{name} {m['throughput_rps']:.1f}" for name, m in busy["models"].items()
        )
        found.append(
            f"{label}, all models busy at once ({busy['concurrency_per_model']} clients each): "
            f"{rates} req/s; shares of their alone throughput add up to {busy['shares_sum']:.2f}"
        )
    busiest = max(
        (
            p["client_cpu_s"] / p["window_s"]
            for model in results["models"].values()
            for served in model["served"].values()
            for p in served["points"]
        ),
        default=0.0,
    )
    found.append(f"load generator CPU: at most {busiest:.1%} of one core during a window")
    return found


def busiest_other(results: dict[str, Any]) -> float:
    """The most cores other processes used during any one measurement of the run."""
    return max(
        (
            entry["other_cores"]
            for model in results["models"].values()
            for entry in [
                *model["in_process"].values(),
                *(p for served in model["served"].values() for p in served["points"]),
                *results["all_busy"].values(),
            ]
        ),
        default=0.0,
    )


def shown(value: float) -> str:
    """Counts as they are, ratios and milliseconds with three decimals (two would show a
    0.849 that misses its 0.85 target as 0.85)."""
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def markdown_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table's lines. A column title ending in ">" is right-aligned (numbers); the
    ">" is not shown."""
    titles = [c.removesuffix(">") for c in columns]
    rules = ["---:" if c.endswith(">") else "---" for c in columns]
    return [
        f"| {' | '.join(titles)} |",
        f"|{'|'.join(rules)}|",
        *(f"| {' | '.join(map(str, row))} |" for row in rows),
    ]


def write_report(results: dict[str, Any], out: Path) -> None:
    lines = ["# Benchmark: served ResNets against the in-process limit and the stock setup", ""]
    lines += [
        f"Run of {results['started']}, {results['wall_time_s']:.0f} s wall time. Load average "
        f"(1, 5, 15 min) at start {results['load']['start']}, at end {results['load']['end']}. "
        "Other work on this machine shares its cores and lowers every figure: the tables give, "
        "for each measurement, the cores other processes used meanwhile (machine CPU time minus "
        f"this benchmark's and its server's); the most was {busiest_other(results):.2f} cores.",
        "",
        "## Machine and versions",
        "",
    ]
    about = {**results["machine"], **results["versions"]}
    lines += markdown_table(["item", "value"], [[k, v] for k, v in about.items()])
    settings = results["settings"]
    lines += [
        "",
        f"Load: closed-loop clients ({', '.join(map(str, settings['concurrencies']))}), each point "
        f"{settings['duration_s']:.0f} s after a warm-up of at least {settings['warmup_s']:.0f} s "
        "(and until every client had one answer); JPEG photos "
        f"({', '.join(p.name for p in PHOTOS)}; PNGs re-encoded at quality {JPEG_QUALITY}); "
        "untrained weights. Our setups serve all the models from one server, as `make serve` "
        "does (each model measured while the others idle, then all loaded at once); the stock "
        "setup serves each model alone. One server at a time.",
        "",
        "## Headline",
        "",
    ]
    lines += markdown_table(
        ["check", "model", "measured>", "target", "result"],
        [
            [
                r["check"],
                r["model"],
                shown(r["value"]),
                r["target"],
                "PASS" if r["passed"] else "FAIL",
            ]
            for r in results["headline"]
        ],
    )
    lines += ["", *[f"- {note}" for note in notes(results)]]
    lines += ["", "## In-process limit (the served file, all cores, inference only)", ""]
    limits = [
        (name, fmt, limit)
        for name, model in results["models"].items()
        for fmt, limit in model["in_process"].items()
    ]
    lines += markdown_table(
        [
            "model",
            "format",
            "input layout",
            *(f"b{b} img/s>" for b in BATCH_SIZES),
            "batch-1 latency ms>",
        ],
        [
            [
                name,
                fmt,
                layout,
                *(f"{speeds[str(b)]:.1f}" for b in BATCH_SIZES),
                f"{limit['batch1_ms'][layout]:.1f}",
            ]
            for name, fmt, limit in limits
            for layout, speeds in limit["img_per_s"].items()
        ],
    )
    lines += [
        "",
        "The limit of a file is its best figure above; its batch-1 latency, the best layout's.",
        "",
    ]
    lines += markdown_table(
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
                f"{limit['limit_img_per_s']:.1f}",
                f"batch {limit['best_batch']}, {limit['best_layout']}",
                f"{limit['batch1_latency_ms']:.1f}",
                f"{limit['other_cores']:.2f}",
                f"{limit.get('limit_after_img_per_s', float('nan')):.1f}",
            ]
            for name, fmt, limit in limits
        ],
    )
    lines += [
        "",
        "The limit is measured again at its best batch and layout right after that format's "
        "served measurements; the gap between the two shows how far this machine's speed moved "
        "meanwhile (the cores are shared with other tenants of the host, unseen from inside).",
        "",
        "Exact preprocessing (decode, resize, crop, normalise, as served), CPU per photo: "
        + ", ".join(
            f"{name} {model['preprocessing_ms']:.2f} ms"
            for name, model in results["models"].items()
            if "preprocessing_ms" in model
        )
        + ". The limit leaves it out, but a server spends it on the same cores, so even a "
        "server with no cost of its own could reach at most 1 / (1 / limit + preprocessing / "
        "cores) images per second; the printed notes give that figure and served / it.",
    ]
    lines += ["", "## Served", ""]
    lines += markdown_table(
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
                p["concurrency"],
                f"{p['throughput_rps']:.1f}",
                *(f"{p['latency_ms'][q]:.0f}" for q in ("p50", "p90", "p99")),
                p["errors"],
                p["requests"],
                f"{p['other_cores']:.2f}",
            ]
            for name, model in results["models"].items()
            for label, served in model["served"].items()
            for p in served["points"]
        ],
    )
    lines += [
        "",
        "Setups: `ours-<format>` = our handler and model-config.yaml with the project's "
        "config.properties and the workers' environment `make serve` sets ("
        + ", ".join(f"`{k}={v}`" for k, v in WORKER_ENVIRONMENT.items())
        + "); `stock` = the same .pt with `--handler image_classifier`, no model-config, "
        "TorchServe's default config and environment (default_workers_per_model = cores, "
        "batch 1).",
        "",
        "## All models busy at once (one server, as `make serve` runs them)",
        "",
    ]
    lines += markdown_table(
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
                m["concurrency"],
                f"{m['throughput_rps']:.1f}",
                *(f"{m['latency_ms'][q]:.0f}" for q in ("p50", "p99")),
                m["errors"],
                f"{m['share_of_alone']:.2f}",
                f"{busy['other_cores']:.2f}",
            ]
            for label, busy in results["all_busy"].items()
            for name, m in busy["models"].items()
        ],
    )
    lines += [
        "",
        "Shares add up to about 1 when the models split the machine without loss (the handler's "
        "compute gate makes their batches take turns, each with all cores); threads of two "
        "models running side by side would oversubscribe the cores and add up to far less.",
        "",
        "## Large JPEG (our handler, concurrency 1)",
        "",
    ]
    by_size = {
        name: sizes
        for name, model in results["models"].items()
        if (sizes := model["served"].get("ours-torchscript", {}).get("jpeg_size"))
    }
    lines += markdown_table(
        ["model", "image", "bytes>", "p50 ms>", "p99 ms>"],
        [
            [
                name,
                sizes[which]["pixels"],
                sizes[which]["bytes"],
                *(f"{sizes[which]['latency_ms'][q]:.1f}" for q in ("p50", "p99")),
            ]
            for name, sizes in by_size.items()
            for which in ("small", "large")
        ],
    )
    ratios = [
        f"{name} {sizes['p50_ratio_large_over_small']:.2f}" for name, sizes in by_size.items()
    ]
    lines += ["", f"p50 ratio 12 MP / 0.3 MP: {', '.join(ratios)}.", ""]
    lines += ["![throughput and p99 against concurrency](bench.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(results: dict[str, Any], out: Path) -> None:
    """Throughput (top) and p99 (bottom) against concurrency, one column per model; each
    in-process limit is a dashed line in the colour of the setup serving that file."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    concurrencies = results["settings"]["concurrencies"]
    colours: dict[str, str] = {}
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for column, name in enumerate(models):
        model = results["models"][name]
        top, bottom = axes[0][column], axes[1][column]
        for label, served in model["served"].items():
            colour = colours.setdefault(label, f"C{len(colours)}")
            xs = [p["concurrency"] for p in served["points"]]
            throughput = [p["throughput_rps"] for p in served["points"]]
            p99 = [p["latency_ms"]["p99"] for p in served["points"]]
            top.plot(xs, throughput, "o-", color=colour, label=label)
            bottom.plot(xs, p99, "o-", color=colour, label=label)
        for fmt, limit in model["in_process"].items():
            top.axhline(
                limit["limit_img_per_s"],
                linestyle="--",
                color=colours.get(f"ours-{fmt}", "gray"),
                label=f"in-process limit ({fmt})",
            )
        top.set(title=f"{name}: throughput", ylabel="req/s", xscale="log", ylim=(0, None))
        bottom.set(
            title=f"{name}: p99 latency",
            ylabel="ms",
            xlabel="concurrent clients (closed loop)",
            xscale="log",
            yscale="log",
        )
        for ax in (top, bottom):
            ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    formats = ["torchscript"] + [f for f in args.formats if f in EXPORTERS and f != "torchscript"]
    work = Workspace(args.work.resolve())
    work.clean()
    load = LoadSettings(tuple(args.concurrency), args.duration, args.warmup)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
        "load": {"start": [round(x, 2) for x in os.getloadavg()]},
        "settings": {
            "formats": formats,
            "concurrencies": list(load.concurrencies),
            "duration_s": load.duration_s,
            "warmup_s": load.warmup_s,
        },
        "models": {name: {"in_process": {}, "served": {}} for name in args.models},
        "all_busy": {},
    }
    progress(f"load average {results['load']['start']}; formats: {', '.join(formats)}")
    payloads = photo_payloads()
    photos = preprocessed_photos()
    sizes = size_test_payloads()

    model_files: dict[str, dict[str, Path]] = {}
    for fmt in formats:
        files = model_files[fmt] = build_and_archive(work, fmt, args.models)
        if fmt == "torchscript":
            archive_stock(work, fmt, args.models)
        for name, model_file in files.items():
            if fmt == "torchscript":
                config = work.build(fmt) / name / "model-config.yaml"
                cost = results["models"][name]["preprocessing_ms"] = preprocessing_cost(
                    config, payloads
                )
                progress(f"{name}: exact preprocessing costs {cost:.2f} ms of CPU per photo")
            progress(f"{name}: in-process limit of {model_file.name}")
            before = cpu_counters()
            limit = in_process_limit(model_file, fmt, photos)
            results["models"][name]["in_process"][fmt] = {
                **limit,
                **other_load(before, cpu_counters()),
            }

    # Our setups serve every model from one server, as `make serve` does; the stock setup serves
    # each alone (TorchServe's defaults, the kindest case for it).
    for fmt in formats:
        label = f"ours-{fmt}"
        per_model, together = serve_and_measure(
            label,
            work.store(fmt),
            list(args.models),
            work.server(label),
            None,
            WORKER_ENVIRONMENT,
            payloads,
            load,
            size_payloads=sizes if fmt == "torchscript" else None,
            all_busy=True,
        )
        for name, result in per_model.items():
            results["models"][name]["served"][label] = result
        if together:
            results["all_busy"][label] = together
        for name, model_file in model_files[fmt].items():
            limit = results["models"][name]["in_process"][fmt]
            limit["limit_after_img_per_s"] = limit_again(model_file, fmt, photos, limit)
            progress(
                f"{name}: in-process limit of {model_file.name} again: "
                f"{limit['limit_after_img_per_s']:.1f} img/s (first {limit['limit_img_per_s']:.1f})"
            )
        if fmt == "torchscript":
            for name in args.models:
                per_model, _ = serve_and_measure(
                    "stock",
                    work.stock_store,
                    [name],
                    work.server(f"stock-{name}"),
                    STOCK_CONFIG,
                    {},
                    payloads,
                    load,
                )
                results["models"][name]["served"]["stock"] = per_model[name]

    results["load"]["end"] = [round(x, 2) for x in os.getloadavg()]
    results["headline"] = headline(results, formats)
    results["wall_time_s"] = round(time.monotonic() - _STARTED, 1)
    return results


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m resnet_mar.bench",
        description=__doc__,
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
        nargs="+",
        default=["onnx"],
        help="formats served besides torchscript (skipped when the toolkit does not export them)",
    )
    root.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    root.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    root.add_argument("--warmup", type=float, default=2.0, help="minimum warm-up per point")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    plot(results, args.out)
    progress(f"wrote {args.out}/report.md, bench.json, bench.png")
    print("\nHeadline (targets of issue 4):")
    for r in results["headline"]:
        verdict = "PASS" if r["passed"] else "FAIL"
        print(
            f"  {verdict}  {r['model']:9s} {r['check']}: {shown(r['value'])} (target {r['target']})"
        )
    for note in notes(results):
        print(f"  info  {note}")
    print(
        f"load average at start {results['load']['start']}, at end {results['load']['end']}; "
        f"other processes used at most {busiest_other(results):.2f} cores during a measurement"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
