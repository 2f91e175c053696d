"""Serving a setup and measuring it: start TorchServe with the setup's archives, sweep the client
counts for each model while the others idle, optionally time the large and small JPEGs and load
every model at once, and stop the server. One server runs at a time, and is always stopped."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from resnet_mar.bench import results
from resnet_mar.bench.archives import Workspace
from resnet_mar.bench.load_client import LoadPoint, run_point
from resnet_mar.bench.machine import cpu_counters, other_load
from resnet_mar.bench.progress import progress
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, ServedSetup, SizedJpeg
from resnet_mar.torchserve import RunningServer, private_server


@dataclass(frozen=True)
class Clients:
    """What the clients of every served setup send, and for how long (the run's settings)."""

    work: Workspace
    payloads: list[bytes]
    sizes: dict[str, SizedJpeg]
    settings: results.Settings

    def measure(
        self, setup: ServedSetup, models: list[str]
    ) -> tuple[dict[str, results.ServedModel], results.AllBusy | None]:
        """Every model under ``setup`` (from one server, or from one server per model), and the
        all-busy point (None: not measured)."""
        if setup.together:
            return self.serve(setup, models)
        found: dict[str, results.ServedModel] = {}
        for name in models:
            found.update(self.serve(setup, [name])[0])
        return found, None

    def serve(
        self, setup: ServedSetup, names: list[str]
    ) -> tuple[dict[str, results.ServedModel], results.AllBusy | None]:
        """Start one server holding ``names``, measure each model in turn, then (if the setup
        asks and there are several) all of them at once; stop the server."""
        label, began, all_busy = setup.label, time.monotonic(), None
        progress(f"{', '.join(names)} [{label}]: starting TorchServe")
        per_model: dict[str, results.ServedModel] = {}
        with private_server(
            self.work.store(setup.archive, setup.model_format),
            names,
            workdir=self.work.server(label if setup.together else f"{label}-{names[0]}"),
            config_text=setup.config_text,
            worker_environment=setup.worker_environment,
            isolated=setup.isolated,
        ) as server:
            startup_s = round(time.monotonic() - began, 1)
            progress(f"{', '.join(names)} [{label}]: READY after {startup_s} s")
            for name in names:
                points = tuple(
                    self.point(server, setup, name, c)
                    for c in setup.concurrencies or self.settings.concurrencies
                )
                sizes = self.jpeg_sizes(server, setup, name) if setup.jpeg_sizes else None
                per_model[name] = results.ServedModel(startup_s, points, sizes)
            if setup.all_busy and len(names) > 1:
                all_busy = self.all_busy(server, setup, per_model)
        progress(f"{', '.join(names)} [{label}]: server stopped")
        return per_model, all_busy

    def load(self, server: RunningServer, setup: ServedSetup, name: str, c: int) -> LoadPoint:
        requests = setup.requests(name, self.payloads)
        duration_s, warmup_s = self.settings.duration_s, self.settings.warmup_s
        return run_point(
            server.endpoints.inference, requests, c, duration_s=duration_s, warmup_s=warmup_s
        )

    def point(
        self, server: RunningServer, setup: ServedSetup, name: str, c: int
    ) -> results.ServedPoint:
        """One model at ``c`` clients, with the other load on the machine meanwhile."""
        before = cpu_counters(server.group_pids())
        point = self.load(server, setup, name, c)
        others = other_load(before, cpu_counters(server.group_pids()))
        progress(f"{name} [{setup.label}] {describe(point)}  other load {others.other_cores}")
        return results.ServedPoint(results.stored(point), others)

    def all_busy(
        self, server: RunningServer, setup: ServedSetup, alone: dict[str, results.ServedModel]
    ) -> results.AllBusy:
        """Every model of the server loaded at once, each by its own clients. A model's share is
        its throughput now over its throughput alone: the shares add up to 1 when the models
        split the machine without loss, and fall far below when their threads oversubscribe the
        cores."""
        c, names = HEADLINE_CONCURRENCY, list(alone)
        before = cpu_counters(server.group_pids())
        with ThreadPoolExecutor(len(names)) as clients:  # re-raises a client's failure
            points = clients.map(lambda name: self.load(server, setup, name, c), names)
            found = dict(zip(names, points, strict=True))
        others = other_load(before, cpu_counters(server.group_pids()))
        models = {}
        for name, point in found.items():
            at_c = alone[name].at(c)
            share = point.throughput_rps / at_c.load.throughput_rps if at_c else 0.0
            models[name] = results.BusyModel(results.stored(point), round(share, 3))
            progress(
                f"{name} [{setup.label}, all busy] {describe(point)}  share of alone {share:.2f}"
            )
        return results.AllBusy(
            c, models, others, round(sum(m.share_of_alone for m in models.values()), 3)
        )

    def jpeg_sizes(self, server: RunningServer, setup: ServedSetup, name: str) -> results.JpegSizes:
        """Latency at concurrency 1 of a 12-megapixel JPEG against a 0.3-megapixel one."""
        found = {}
        for which, jpeg in self.sizes.items():
            requests = setup.requests(name, [jpeg.data])
            point = run_point(server.endpoints.inference, requests, 1, duration_s=5.0, warmup_s=1.0)
            found[which] = results.JpegPoint(jpeg.pixels, len(jpeg.data), results.stored(point))
            progress(f"{name} {which} JPEG {jpeg.pixels}: {describe(point)}")
        ratio = found["large"].load.latency_ms.p50 / found["small"].load.latency_ms.p50
        return results.JpegSizes(found["small"], found["large"], round(ratio, 2))


def describe(point: LoadPoint) -> str:
    lat = point.latency_ms
    return (
        f"c={point.concurrency:<3d} {point.throughput_rps:6.1f} req/s  p50 {lat.p50:7.1f} ms  "
        f"p90 {lat.p90:7.1f} ms  p99 {lat.p99:7.1f} ms  errors {point.errors}"
    )
