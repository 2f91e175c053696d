"""Every figure one benchmark run measures, as dataclasses; ``bench.json`` is
:func:`dataclasses.asdict` of :class:`Results`, read back by :func:`from_dict`.

The report, the plot and the headline read these types, never a parsed dict, and
:func:`from_dict` checks every key and value against the annotations: a renamed or missing
figure fails where the file is read, not halfway through a report. Measured values are rounded
once, when a measurement becomes a result (:func:`stored`): a report rendered during the run and
one rendered later from its ``bench.json`` are the same.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from resnet_mar.bench.load_client import Latency, LoadPoint

T = TypeVar("T")


def from_dict(cls: type[T], data: Any) -> T:
    """The dataclass ``cls`` from parsed JSON, every value converted by its field's annotation
    (nested dataclasses, ``list``, ``tuple``, ``dict``, ``X | None``, plain types). Keys must
    be exactly the fields: a file that is not this version's fails here, whole, saying where."""
    names = [item.name for item in dataclasses.fields(cls)]
    if not isinstance(data, dict) or set(data) != set(names):
        found = sorted(data) if isinstance(data, dict) else repr(data)
        raise ValueError(f"{cls.__name__} needs the keys {sorted(names)}, got {found}")
    hints, values = typing.get_type_hints(cls), {}
    for name in names:
        try:
            values[name] = _typed(data[name], hints[name])
        except ValueError as error:
            raise ValueError(f"{cls.__name__}.{name}: {error}") from None
    return cls(**values)


def _typed(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _typed(value, kind)
    if origin in (list, tuple, dict) and not isinstance(value, dict if origin is dict else list):
        raise ValueError(f"expected {hint}, got {value!r}")
    if origin is list:
        return [_typed(item, args[0]) for item in value]
    if origin is tuple:
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_typed(item, kind) for item, kind in zip(value, kinds, strict=True))
    if origin is dict:
        # JSON keys are strings: an int key (a batch size) comes back from its digits.
        key = int if args[0] is int else args[0]
        return {key(k): _typed(v, args[1]) for k, v in value.items()}
    if isinstance(value, hint) or (hint is float and isinstance(value, int)):
        return value
    raise ValueError(f"expected {hint.__name__}, got {value!r}")


@dataclass(frozen=True)
class OtherLoad:
    """Cores other processes used during a measurement, and cores the hypervisor gave elsewhere
    (steal): a figure measured while either is well above zero is lower than this machine's."""

    other_cores: float
    steal_cores: float


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


@dataclass(frozen=True)
class ServedPoint:
    load: LoadPoint
    other: OtherLoad


@dataclass(frozen=True)
class JpegPoint:
    """One photo size sent alone at concurrency 1."""

    pixels: str
    bytes: int
    load: LoadPoint


@dataclass(frozen=True)
class JpegSizes:
    """What a 12-megapixel JPEG costs against a 0.3-megapixel one, end to end."""

    small: JpegPoint
    large: JpegPoint
    p50_ratio_large_over_small: float


@dataclass(frozen=True)
class ServedModel:
    """One model under one served setup: the concurrency sweep, and the JPEG sizes if timed."""

    startup_s: float
    points: tuple[ServedPoint, ...]
    jpeg_size: JpegSizes | None = None

    def at(self, concurrency: int) -> ServedPoint | None:
        return next((p for p in self.points if p.load.concurrency == concurrency), None)


@dataclass(frozen=True)
class BusyModel:
    """One model while every model of its server is loaded; its share is its throughput now
    over its throughput alone at the same concurrency."""

    load: LoadPoint
    share_of_alone: float


@dataclass(frozen=True)
class AllBusy:
    """Every model of one server loaded at once, each by its own clients."""

    concurrency_per_model: int
    models: dict[str, BusyModel]
    other: OtherLoad
    shares_sum: float


@dataclass(frozen=True)
class InProcessLimit:
    """The served file in this process on all cores, inference only: images per second at each
    input layout and batch size, the best of them (the limit), the median batch-1 latency, and
    the same file on one thread at the limit's batch and layout (how the limit scales with
    cores). ``limit_after_img_per_s`` is the limit measured again after the served measurements
    (None until then)."""

    file: str
    threads: int
    img_per_s: dict[str, dict[int, float]]
    batch1_ms: dict[str, float]
    limit_img_per_s: float
    best_batch: int
    best_layout: str
    batch1_latency_ms: float
    one_thread_img_per_s: float
    other: OtherLoad
    limit_after_img_per_s: float | None = None


@dataclass
class ModelResults:
    """Everything measured for one model: the arithmetic one image asks of it (GFLOP, the same
    in every format), its limit per format, each served setup (by label) and the CPU its exact
    preprocessing costs per photo (None until measured)."""

    gflop_per_image: float
    in_process: dict[str, InProcessLimit] = field(default_factory=dict)
    served: dict[str, ServedModel] = field(default_factory=dict)
    preprocessing_ms: float | None = None

    def point(self, label: str, concurrency: int) -> ServedPoint | None:
        served = self.served.get(label)
        return served.at(concurrency) if served else None


@dataclass(frozen=True)
class MatmulPeak:
    """GFLOP/s of a ``size`` x ``size`` float32 matrix product on ``threads`` threads, the best
    of ``calls`` calls: an in-process limit times its model's GFLOP per image, over this, is the
    share of the hardware's FP32 arithmetic the file uses."""

    gflop_per_s: float
    size: int
    threads: int
    calls: int
    other: OtherLoad


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    ram_gib: float
    os: str


@dataclass(frozen=True)
class Int8Gate:
    """The quality gate an int8 build passed (``BuildRequest.int8_min_agreement`` and
    ``int8_max_error``)."""

    min_agreement: float
    max_error: float


@dataclass(frozen=True)
class Settings:
    """What the run was asked to measure; ``int8_gate`` None: it built no int8 model."""

    formats: tuple[str, ...]
    concurrencies: tuple[int, ...]
    duration_s: float
    warmup_s: float
    int8_gate: Int8Gate | None


@dataclass(frozen=True)
class HeadlineRow:
    """One target checked on one model (and format); ``value`` is None when the run did not
    measure what the target needs, and the row fails."""

    check: str
    model: str
    value: float | None
    target: str
    passed: bool


@dataclass
class Results:
    """One run, filled as it goes (``load_end``, ``wall_time_s`` and ``headline`` at its end).
    The stored headline is for readers of ``bench.json``; the report checks the targets again
    from the figures, so an edited verdict in a file cannot pass a figure."""

    started: str
    machine: Machine
    versions: dict[str, str]
    load_start: list[float]
    settings: Settings
    fp32_peak: MatmulPeak
    models: dict[str, ModelResults]
    all_busy: dict[str, AllBusy] = field(default_factory=dict)
    load_end: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    headline: list[HeadlineRow] = field(default_factory=list)

    def limits(self) -> Iterator[tuple[str, str, ModelResults, InProcessLimit]]:
        """Every in-process limit, model by model, with its model's name, format and results."""
        for name, model in self.models.items():
            for fmt, limit in model.in_process.items():
                yield name, fmt, model, limit

    def points(self) -> Iterator[tuple[str, str, ServedPoint]]:
        """Every served point, model by model, with its model's name and its setup's label."""
        for name, model in self.models.items():
            for label, served in model.served.items():
                for point in served.points:
                    yield name, label, point
