"""Serving a setup and measuring it: start TorchServe with the setup's archives, sweep the client
counts for each model while the others idle, optionally time the large and small JPEGs and load
every model at once, and stop the server. One server runs at a time, and is always stopped."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from resnet_mar.bench.archives import Workspace
from resnet_mar.bench.load_client import LoadPoint, run_point
from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.progress import progress
from resnet_mar.bench.results import (
    AllBusy,
    BusyModel,
    JpegPoint,
    JpegSizes,
    OtherLoad,
    ServedModel,
    ServedPoint,
    Settings,
    stored,
)
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, ServedSetup, SizedJpeg
from resnet_mar.torchserve import RunningServer, private_server

#: Each model's figures under a setup, and the all-busy point (None: not measured).
Measured = tuple[dict[str, ServedModel], AllBusy | None]


def measure_setup(
    setup: ServedSetup,
    work: Workspace,
    models: list[str],
    payloads: list[bytes],
    load: Settings,
    sizes: dict[str, SizedJpeg],
) -> Measured:
    """Every model under ``setup``: from one server, or from one server per model."""
    if setup.together:
        return serve(setup, work, models, payloads, load, sizes)
    found: dict[str, ServedModel] = {}
    for name in models:
        found.update(serve(setup, work, [name], payloads, load, sizes)[0])
    return found, None


def serve(
    setup: ServedSetup,
    work: Workspace,
    names: list[str],
    payloads: list[bytes],
    load: Settings,
    sizes: dict[str, SizedJpeg],
) -> Measured:
    """Start one server holding ``names``, measure each model in turn, then (if the setup asks
    and there are several) all of them at once; stop the server."""
    label, began, together = setup.label, time.monotonic(), None
    progress(f"{', '.join(names)} [{label}]: starting TorchServe")
    per_model: dict[str, ServedModel] = {}
    with private_server(
        work.store(setup.archive, setup.model_format),
        names,
        workdir=work.server(label if setup.together else f"{label}-{names[0]}"),
        config_text=setup.config_text,
        worker_environment=setup.worker_environment,
        isolated=setup.isolated,
    ) as server:
        startup_s = round(time.monotonic() - began, 1)
        progress(f"{', '.join(names)} [{label}]: READY after {startup_s} s")
        for name in names:
            points = tuple(
                ServedPoint(*measure(server, setup, name, payloads, c, load))
                for c in setup.concurrencies or load.concurrencies
            )
            jpeg_size = measure_jpeg_sizes(server, setup, name, sizes) if setup.jpeg_sizes else None
            per_model[name] = ServedModel(startup_s, points, jpeg_size)
        if setup.all_busy and len(names) > 1:
            together = measure_all_busy(server, setup, names, payloads, load, per_model)
    progress(f"{', '.join(names)} [{label}]: server stopped")
    return per_model, together


def measure(
    server: RunningServer,
    setup: ServedSetup,
    name: str,
    payloads: list[bytes],
    concurrency: int,
    load: Settings,
) -> tuple[LoadPoint, OtherLoad]:
    """One model at one client count, with the other load on the machine meanwhile."""
    before = cpu_counters(server.group_pids())
    point = run_point(
        server.endpoints.inference,
        setup.requests(name, payloads),
        concurrency,
        duration_s=load.duration_s,
        warmup_s=load.warmup_s,
    )
    others = other_load(before, cpu_counters(server.group_pids()))
    progress(f"{name} [{setup.label}] {describe(point)}  other load {others.other_cores}")
    return stored(point), others


def measure_all_busy(
    server: RunningServer,
    setup: ServedSetup,
    names: list[str],
    payloads: list[bytes],
    load: Settings,
    alone: dict[str, ServedModel],
) -> AllBusy:
    """Every model of the server loaded at once, each by its own clients. A model's share is
    its throughput now over its throughput alone: the shares add up to 1 when the models split
    the machine without loss, and fall far below when their threads oversubscribe the cores."""
    c = HEADLINE_CONCURRENCY

    def load_one(name: str) -> LoadPoint:
        url, requests = server.endpoints.inference, setup.requests(name, payloads)
        return run_point(url, requests, c, duration_s=load.duration_s, warmup_s=load.warmup_s)

    before = cpu_counters(server.group_pids())
    with ThreadPoolExecutor(max_workers=len(names)) as clients:  # re-raises a client's failure
        points = dict(zip(names, clients.map(load_one, names), strict=True))
    others = other_load(before, cpu_counters(server.group_pids()))
    models = {}
    for name, point in points.items():
        alone_at_c = alone[name].at(c)
        share = point.throughput_rps / alone_at_c.load.throughput_rps if alone_at_c else 0.0
        models[name] = BusyModel(stored(point), round(share, 3))
        progress(f"{name} [{setup.label}, all busy] {describe(point)}  share of alone {share:.2f}")
    return AllBusy(c, models, others, round(sum(m.share_of_alone for m in models.values()), 3))


def measure_jpeg_sizes(
    server: RunningServer, setup: ServedSetup, name: str, sizes: dict[str, SizedJpeg]
) -> JpegSizes:
    """Latency at concurrency 1 of a 12-megapixel JPEG against a 0.3-megapixel one."""
    found = {}
    for which, jpeg in sizes.items():
        requests = setup.requests(name, [jpeg.data])
        point = run_point(server.endpoints.inference, requests, 1, duration_s=5.0, warmup_s=1.0)
        found[which] = JpegPoint(jpeg.pixels, len(jpeg.data), stored(point))
        progress(f"{name} {which} JPEG {jpeg.pixels}: {describe(point)}")
    ratio = found["large"].load.latency_ms.p50 / found["small"].load.latency_ms.p50
    return JpegSizes(found["small"], found["large"], round(ratio, 2))


def describe(point: LoadPoint) -> str:
    lat = point.latency_ms
    return (
        f"c={point.concurrency:<3d} {point.throughput_rps:6.1f} req/s  p50 {lat.p50:7.1f} ms  "
        f"p90 {lat.p90:7.1f} ms  p99 {lat.p99:7.1f} ms  errors {point.errors}"
    )
