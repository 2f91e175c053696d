"""Every figure one benchmark run measures, as dataclasses, and ``bench.json`` both ways.

The report, the plot and the headline read these types, never a parsed dict, so a renamed or
missing figure fails where it is used. ``bench.json`` keeps the layout it has always had (a
load point's fields side by side with the other load measured meanwhile), so the files of
earlier runs read back and render again; a figure added later (the FP32 peak, GFLOP per
image, the one-thread limit, the int8 gate) is written only when measured and reads back as
None from an earlier file, which the report shows as "not measured". Measured values are
rounded as they are stored, once, when a measurement becomes a result: a report rendered during
the run and one rendered later from its ``bench.json`` are the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from resnet_mar.load_client import Latency, LoadPoint

Json = dict[str, Any]


@dataclass(frozen=True)
class OtherLoad:
    """Cores other processes used during a measurement, and cores the hypervisor gave elsewhere
    (steal): a figure measured while either is well above zero is lower than this machine's."""

    other_cores: float
    steal_cores: float

    def to_json(self) -> Json:
        return {"other_cores": self.other_cores, "steal_cores": self.steal_cores}

    @classmethod
    def from_json(cls, data: Json) -> OtherLoad:
        return cls(data["other_cores"], data["steal_cores"])


def stored(point: LoadPoint) -> LoadPoint:
    """A load point with the precision ``bench.json`` keeps."""
    lat = point.latency_ms
    return replace(
        point,
        window_s=round(point.window_s, 3),
        warmup_s=round(point.warmup_s, 3),
        throughput_rps=round(point.throughput_rps, 3),
        latency_ms=Latency(*(round(v, 2) for v in (lat.p50, lat.p90, lat.p99, lat.mean))),
        client_cpu_s=round(point.client_cpu_s, 3),
    )


def point_to_json(point: LoadPoint) -> Json:
    lat = point.latency_ms
    return {
        "concurrency": point.concurrency,
        "window_s": point.window_s,
        "warmup_s": point.warmup_s,
        "requests": point.requests,
        "throughput_rps": point.throughput_rps,
        "latency_ms": {"p50": lat.p50, "p90": lat.p90, "p99": lat.p99, "mean": lat.mean},
        "errors": point.errors,
        "error_kinds": dict(point.error_kinds),
        "client_cpu_s": point.client_cpu_s,
    }


def point_from_json(data: Json) -> LoadPoint:
    lat = data["latency_ms"]
    return LoadPoint(
        concurrency=data["concurrency"],
        window_s=data["window_s"],
        warmup_s=data["warmup_s"],
        requests=data["requests"],
        throughput_rps=data["throughput_rps"],
        latency_ms=Latency(lat["p50"], lat["p90"], lat["p99"], lat["mean"]),
        errors=data["errors"],
        error_kinds=dict(data["error_kinds"]),
        client_cpu_s=data["client_cpu_s"],
    )


@dataclass(frozen=True)
class ServedPoint:
    """One concurrency of one served setup, and the other load meanwhile."""

    load: LoadPoint
    other: OtherLoad

    def to_json(self) -> Json:
        return {**point_to_json(self.load), **self.other.to_json()}

    @classmethod
    def from_json(cls, data: Json) -> ServedPoint:
        return cls(point_from_json(data), OtherLoad.from_json(data))


@dataclass(frozen=True)
class JpegPoint:
    """One photo size sent alone at concurrency 1."""

    pixels: str
    bytes: int
    load: LoadPoint

    def to_json(self) -> Json:
        return {"pixels": self.pixels, "bytes": self.bytes, **point_to_json(self.load)}

    @classmethod
    def from_json(cls, data: Json) -> JpegPoint:
        return cls(data["pixels"], data["bytes"], point_from_json(data))


@dataclass(frozen=True)
class JpegSizes:
    """What a 12-megapixel JPEG costs against a 0.3-megapixel one, end to end."""

    small: JpegPoint
    large: JpegPoint
    p50_ratio_large_over_small: float

    def to_json(self) -> Json:
        return {
            "small": self.small.to_json(),
            "large": self.large.to_json(),
            "p50_ratio_large_over_small": self.p50_ratio_large_over_small,
        }

    @classmethod
    def from_json(cls, data: Json) -> JpegSizes:
        return cls(
            JpegPoint.from_json(data["small"]),
            JpegPoint.from_json(data["large"]),
            data["p50_ratio_large_over_small"],
        )


@dataclass(frozen=True)
class ServedModel:
    """One model under one served setup: the concurrency sweep, and the JPEG sizes if timed."""

    startup_s: float
    points: tuple[ServedPoint, ...]
    jpeg_size: JpegSizes | None = None

    def at(self, concurrency: int) -> ServedPoint | None:
        return next((p for p in self.points if p.load.concurrency == concurrency), None)

    def to_json(self) -> Json:
        found: Json = {"startup_s": self.startup_s, "points": [p.to_json() for p in self.points]}
        if self.jpeg_size is not None:
            found["jpeg_size"] = self.jpeg_size.to_json()
        return found

    @classmethod
    def from_json(cls, data: Json) -> ServedModel:
        sizes = data.get("jpeg_size")
        return cls(
            data["startup_s"],
            tuple(ServedPoint.from_json(p) for p in data["points"]),
            JpegSizes.from_json(sizes) if sizes else None,
        )


@dataclass(frozen=True)
class BusyModel:
    """One model while every model of its server is loaded; its share is its throughput now
    over its throughput alone at the same concurrency."""

    load: LoadPoint
    share_of_alone: float

    def to_json(self) -> Json:
        return {**point_to_json(self.load), "share_of_alone": self.share_of_alone}

    @classmethod
    def from_json(cls, data: Json) -> BusyModel:
        return cls(point_from_json(data), data["share_of_alone"])


@dataclass(frozen=True)
class AllBusy:
    """Every model of one server loaded at once, each by its own clients."""

    concurrency_per_model: int
    models: dict[str, BusyModel]
    other: OtherLoad
    shares_sum: float

    def to_json(self) -> Json:
        return {
            "concurrency_per_model": self.concurrency_per_model,
            "models": {name: m.to_json() for name, m in self.models.items()},
            **self.other.to_json(),
            "shares_sum": self.shares_sum,
        }

    @classmethod
    def from_json(cls, data: Json) -> AllBusy:
        return cls(
            data["concurrency_per_model"],
            {name: BusyModel.from_json(m) for name, m in data["models"].items()},
            OtherLoad.from_json(data),
            data["shares_sum"],
        )


@dataclass(frozen=True)
class InProcessLimit:
    """The served file in this process on all cores, inference only: images per second at each
    input layout and batch size, the best of them (the limit), and the median batch-1 latency.
    ``limit_after_img_per_s`` is the limit measured again after the served measurements;
    ``one_thread_img_per_s`` the same file on one thread at the limit's batch and layout (how
    the limit scales with cores). None: not measured (runs before it have neither)."""

    file: str
    threads: int
    img_per_s: dict[str, dict[int, float]]
    batch1_ms: dict[str, float]
    limit_img_per_s: float
    best_batch: int
    best_layout: str
    batch1_latency_ms: float
    other: OtherLoad
    limit_after_img_per_s: float | None = None
    one_thread_img_per_s: float | None = None

    def to_json(self) -> Json:
        found: Json = {
            "file": self.file,
            "threads": self.threads,
            "img_per_s": {
                layout: {str(b): v for b, v in speeds.items()}
                for layout, speeds in self.img_per_s.items()
            },
            "batch1_ms": dict(self.batch1_ms),
            "limit_img_per_s": self.limit_img_per_s,
            "best_batch": self.best_batch,
            "best_layout": self.best_layout,
            "batch1_latency_ms": self.batch1_latency_ms,
            **self.other.to_json(),
        }
        if self.limit_after_img_per_s is not None:
            found["limit_after_img_per_s"] = self.limit_after_img_per_s
        if self.one_thread_img_per_s is not None:
            found["one_thread_img_per_s"] = self.one_thread_img_per_s
        return found

    @classmethod
    def from_json(cls, data: Json) -> InProcessLimit:
        return cls(
            file=data["file"],
            threads=data["threads"],
            img_per_s={
                layout: {int(b): v for b, v in speeds.items()}
                for layout, speeds in data["img_per_s"].items()
            },
            batch1_ms=dict(data["batch1_ms"]),
            limit_img_per_s=data["limit_img_per_s"],
            best_batch=data["best_batch"],
            best_layout=data["best_layout"],
            batch1_latency_ms=data["batch1_latency_ms"],
            other=OtherLoad.from_json(data),
            limit_after_img_per_s=data.get("limit_after_img_per_s"),
            one_thread_img_per_s=data.get("one_thread_img_per_s"),
        )


@dataclass
class ModelResults:
    """Everything measured for one model: its limit per format, each served setup (by label),
    the CPU its exact preprocessing costs per photo and the arithmetic one image asks of it
    (GFLOP, the same in every format). None: not measured (runs before it counted no GFLOP)."""

    in_process: dict[str, InProcessLimit] = field(default_factory=dict)
    served: dict[str, ServedModel] = field(default_factory=dict)
    preprocessing_ms: float | None = None
    gflop_per_image: float | None = None

    def point(self, label: str, concurrency: int) -> ServedPoint | None:
        """The setup ``label``'s point at ``concurrency``, None when it was not measured."""
        served = self.served.get(label)
        return served.at(concurrency) if served else None

    def to_json(self) -> Json:
        found: Json = {
            "in_process": {fmt: limit.to_json() for fmt, limit in self.in_process.items()},
            "served": {label: s.to_json() for label, s in self.served.items()},
        }
        if self.preprocessing_ms is not None:
            found["preprocessing_ms"] = self.preprocessing_ms
        if self.gflop_per_image is not None:
            found["gflop_per_image"] = self.gflop_per_image
        return found

    @classmethod
    def from_json(cls, data: Json) -> ModelResults:
        return cls(
            {fmt: InProcessLimit.from_json(limit) for fmt, limit in data["in_process"].items()},
            {label: ServedModel.from_json(s) for label, s in data["served"].items()},
            data.get("preprocessing_ms"),
            data.get("gflop_per_image"),
        )


@dataclass(frozen=True)
class MatmulPeak:
    """The machine's FP32 arithmetic peak as one run measured it: GFLOP/s of a ``size`` x
    ``size`` float32 matrix product (2 size^3 operations) on ``threads`` threads, the best of
    ``calls`` calls, and the other load meanwhile. An in-process limit times its model's GFLOP
    per image, over this, is the share of the hardware's FP32 arithmetic the file uses."""

    gflop_per_s: float
    size: int
    threads: int
    calls: int
    other: OtherLoad

    def to_json(self) -> Json:
        return {
            "gflop_per_s": self.gflop_per_s,
            "size": self.size,
            "threads": self.threads,
            "calls": self.calls,
            **self.other.to_json(),
        }

    @classmethod
    def from_json(cls, data: Json) -> MatmulPeak:
        return cls(
            data["gflop_per_s"],
            data["size"],
            data["threads"],
            data["calls"],
            OtherLoad.from_json(data),
        )


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    ram_gib: float
    os: str


@dataclass(frozen=True)
class Int8Gate:
    """The quality gate an int8 build must pass (``BuildRequest.int8_min_agreement`` and
    ``int8_max_error``): top-1 agreement with FP32 on held-aside photos, and the largest error
    of the top-1 class's probability."""

    min_agreement: float
    max_error: float

    def to_json(self) -> Json:
        return {"min_agreement": self.min_agreement, "max_error": self.max_error}

    @classmethod
    def from_json(cls, data: Json) -> Int8Gate:
        return cls(data["min_agreement"], data["max_error"])


@dataclass(frozen=True)
class Settings:
    """What the run was asked to measure: formats, client counts, seconds per point, and the
    gate its int8 builds passed (None: the run built no int8 model)."""

    formats: tuple[str, ...]
    concurrencies: tuple[int, ...]
    duration_s: float
    warmup_s: float
    int8_gate: Int8Gate | None = None

    def to_json(self) -> Json:
        found: Json = {
            "formats": list(self.formats),
            "concurrencies": list(self.concurrencies),
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
        }
        if self.int8_gate is not None:
            found["int8_gate"] = self.int8_gate.to_json()
        return found

    @classmethod
    def from_json(cls, data: Json) -> Settings:
        gate = data.get("int8_gate")
        return cls(
            tuple(data["formats"]),
            tuple(data["concurrencies"]),
            data["duration_s"],
            data["warmup_s"],
            Int8Gate.from_json(gate) if gate else None,
        )


@dataclass(frozen=True)
class HeadlineRow:
    """One target checked on one model (and format); ``value`` is None when the run did not
    measure what the target needs, and the row fails."""

    check: str
    model: str
    value: float | None
    target: str
    passed: bool

    def to_json(self) -> Json:
        return {
            "check": self.check,
            "model": self.model,
            "value": self.value,
            "target": self.target,
            "passed": self.passed,
        }


@dataclass
class Results:
    """One run. It is filled as the run goes (``load_end`` and ``wall_time_s`` at its end).
    ``fp32_peak`` None: not measured (runs before it did not measure the peak)."""

    started: str
    machine: Machine
    versions: dict[str, str]
    load_start: list[float]
    settings: Settings
    models: dict[str, ModelResults]
    all_busy: dict[str, AllBusy] = field(default_factory=dict)
    load_end: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    fp32_peak: MatmulPeak | None = None

    def to_json(self, headline: list[HeadlineRow]) -> Json:
        """``bench.json``, with the headline as checked at the end of the run."""
        peak = {"fp32_peak": self.fp32_peak.to_json()} if self.fp32_peak else {}
        return {
            "started": self.started,
            "machine": asdict(self.machine),
            "versions": dict(self.versions),
            "load": {"start": list(self.load_start), "end": list(self.load_end)},
            "settings": self.settings.to_json(),
            **peak,
            "models": {name: model.to_json() for name, model in self.models.items()},
            "all_busy": {label: busy.to_json() for label, busy in self.all_busy.items()},
            "headline": [row.to_json() for row in headline],
            "wall_time_s": self.wall_time_s,
        }

    @classmethod
    def from_json(cls, data: Json) -> Results:
        """A run read back from its ``bench.json``. Its stored headline is not read: the
        headline is checked again from the measurements (``targets.headline``)."""
        return cls(
            started=data["started"],
            machine=Machine(**data["machine"]),
            versions=dict(data["versions"]),
            load_start=list(data["load"]["start"]),
            settings=Settings.from_json(data["settings"]),
            models={name: ModelResults.from_json(m) for name, m in data["models"].items()},
            all_busy={label: AllBusy.from_json(b) for label, b in data["all_busy"].items()},
            load_end=list(data["load"]["end"]),
            wall_time_s=data["wall_time_s"],
            fp32_peak=MatmulPeak.from_json(data["fp32_peak"]) if "fp32_peak" in data else None,
        )
