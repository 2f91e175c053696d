"""Serving a setup and measuring it: one server at a time, always stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from resnet_mar.bench import progress, results
from resnet_mar.bench.archives import FLOOR, Workspace
from resnet_mar.bench.load_client import LoadPoint, run_point
from resnet_mar.bench.machine import CpuSample, cpu_counters, cpu_profile, cpu_sample, other_load
from resnet_mar.bench.setups import HEADLINE_CONCURRENCY, ServedSetup, SizedJpeg
from resnet_mar.torchserve import RunningServer, private_server

#: A model's in-process limit (img/s, at its batch and layout) and exact preprocessing's CPU
#: per photo (ms), measured now: its name and format -> the two figures.
BoundNow = Callable[[str, str], tuple[float, float]]


@dataclass(frozen=True)
class Clients:
    work: Workspace
    payloads: list[bytes]
    sizes: dict[str, SizedJpeg]
    settings: results.Settings
    bound_now: BoundNow

    def measure(self, setup: ServedSetup, run: results.Results) -> None:
        """Every model of ``run``: ours from one server, stock from one server per model."""
        for names in [[name] for name in run.models] if setup.stock else [list(run.models)]:
            self.serve(setup, names, run)

    def serve(self, setup: ServedSetup, names: list[str], run: results.Results) -> None:
        label, began = setup.label, time.monotonic()
        progress(f"{', '.join(names)} [{label}]: starting TorchServe")
        store = self.work.store(setup.model_format, setup.stock)
        folder = self.work.server(f"{label}-{names[0]}" if setup.stock else label)
        with private_server(store, names, workdir=folder, **setup.server()) as server:
            startup_s = round(time.monotonic() - began, 1)
            progress(f"{', '.join(names)} [{label}]: READY after {startup_s} s")
            for name in names:
                concurrencies = setup.concurrencies or self.settings.concurrencies
                points, beside = [], []
                for c in concurrencies:
                    bracketed = setup.bound_and_all_busy and c == HEADLINE_CONCURRENCY
                    if bracketed:
                        beside.append(self.bound(server, setup, name))
                    points.append(self.point(server, setup, name, c))
                    if bracketed:
                        beside.append(self.bound(server, setup, name))
                sizes = self.jpeg_sizes(server, setup, name) if setup.jpeg_sizes else None
                run.models[name].served[label] = results.ServedModel(
                    startup_s, tuple(points), sizes, measured_around(beside)
                )
            if setup.bound_and_all_busy and len(names) > 1:
                run.all_busy[label] = self.all_busy(server, setup, run, names)
        progress(f"{', '.join(names)} [{label}]: server stopped")

    def protocol_floor(self) -> results.ServedPoint:
        """The empty handler's archive, served as ours are, at the headline concurrency: the
        second of two points, so that the Java frontend's first minute (its JIT compiling, 3-4x
        the CPU per answer) does not count; the floor this gives is the lower for it."""
        setup = ServedSetup(FLOOR, FLOOR)
        progress(f"{FLOOR} [empty handler]: starting TorchServe")
        store, folder = self.work.store(FLOOR), self.work.server(FLOOR)
        with private_server(store, [FLOOR], workdir=folder, **setup.server()) as server:
            self.point(server, setup, FLOOR, HEADLINE_CONCURRENCY)
            return self.point(server, setup, FLOOR, HEADLINE_CONCURRENCY)

    def bound(
        self, server: RunningServer, setup: ServedSetup, name: str
    ) -> tuple[float, float, results.OtherLoad]:
        """The bound's figures now, in this process, while the server idles (its CPU is not
        counted as other load)."""
        before = cpu_counters(server.group_pids())
        limit, preprocessing = self.bound_now(name, setup.model_format)
        others = other_load(before, cpu_counters(server.group_pids()))
        progress(
            f"{name} [{setup.label}] bound now: limit {limit:.1f} img/s, exact preprocessing "
            f"{preprocessing:.2f} ms per photo  other load {others.other_cores}"
        )
        return limit, preprocessing, others

    def load(
        self,
        server: RunningServer,
        setup: ServedSetup,
        name: str,
        c: int,
        at_window: Callable[[], object] = lambda: None,
    ) -> LoadPoint:
        requests = setup.requests(name, self.payloads)
        timing = {"duration_s": self.settings.duration_s, "warmup_s": self.settings.warmup_s}
        return run_point(server.endpoints.inference, requests, c, at_window=at_window, **timing)

    def point(
        self, server: RunningServer, setup: ServedSetup, name: str, c: int
    ) -> results.ServedPoint:
        before = cpu_counters(server.group_pids())
        samples: list[CpuSample] = []
        point = self.load(
            server, setup, name, c, lambda: samples.append(cpu_sample(server.group_pids()))
        )
        others = other_load(before, cpu_counters(server.group_pids()))
        cpu = cpu_profile(*samples, point.requests)
        progress(
            f"{name} [{setup.label}] {describe(point)}  other load {others.other_cores}  "
            f"busy cores {cpu.busy_cores:.2f}"
        )
        return results.ServedPoint(point, others, cpu)

    def all_busy(
        self, server: RunningServer, setup: ServedSetup, run: results.Results, names: list[str]
    ) -> results.AllBusy:
        """Every model loaded at once, each by its own clients. Their shares of their throughput
        alone add up to 1 when the models split the machine without loss, and fall far below
        when their threads oversubscribe the cores."""
        c = HEADLINE_CONCURRENCY
        before = cpu_counters(server.group_pids())
        with ThreadPoolExecutor(len(names)) as clients:  # re-raises a client's failure
            points = list(clients.map(lambda name: self.load(server, setup, name, c), names))
        others = other_load(before, cpu_counters(server.group_pids()))
        models = {}
        for name, point in zip(names, points, strict=True):
            alone = run.models[name].point(setup.label, c)
            share = point.throughput_rps / alone.load.throughput_rps if alone else 0.0
            models[name] = results.BusyModel(point, round(share, 3))
            progress(f"{name} [{setup.label}, all busy] {describe(point)}  share {share:.2f}")
        shares = round(sum(m.share_of_alone for m in models.values()), 3)
        return results.AllBusy(c, models, others, shares)

    def jpeg_sizes(self, server: RunningServer, setup: ServedSetup, name: str) -> results.JpegSizes:
        """Latency at concurrency 1 of a 12-megapixel JPEG against a 0.3-megapixel one."""
        found = {}
        for which, jpeg in self.sizes.items():
            requests = setup.requests(name, [jpeg.data])
            point = run_point(server.endpoints.inference, requests, 1, duration_s=5.0, warmup_s=1.0)
            found[which] = results.JpegPoint(jpeg.pixels, len(jpeg.data), point)
            progress(f"{name} {which} JPEG {jpeg.pixels}: {describe(point)}")
        ratio = found["large"].load.latency_ms.p50 / found["small"].load.latency_ms.p50
        return results.JpegSizes(found["small"], found["large"], round(ratio, 2))


def measured_around(
    measured: list[tuple[float, float, results.OtherLoad]],
) -> results.BoundBeside | None:
    """The bound's figures measured around the headline point, with the busier of their other
    loads; None for a setup not held to the bound."""
    if not measured:
        return None
    limits, preprocessing, others = zip(*measured, strict=True)
    busiest = max(others, key=lambda other: other.other_cores)
    return results.BoundBeside(limits, preprocessing, busiest)


def describe(point: LoadPoint) -> str:
    lat = point.latency_ms
    return (
        f"c={point.concurrency:<3d} {point.throughput_rps:6.1f} req/s  p50 {lat.p50:7.1f} ms  "
        f"p90 {lat.p90:7.1f} ms  p99 {lat.p99:7.1f} ms  errors {point.errors}"
    )
