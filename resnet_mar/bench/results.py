"""Every figure a run measures, as dataclasses: ``bench.json`` is :func:`dataclasses.asdict` of
:class:`Results`, read back by :func:`from_dict`, which checks every key and value against the
annotations (a renamed or missing figure fails where the file is read, not halfway through a
report). Figures are rounded where they are measured, to what ``bench.json`` keeps: a report
rendered during the run and one rendered from its ``bench.json`` are the same.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from resnet_mar.bench.load_client import LoadPoint

T = TypeVar("T")


def from_dict(cls: type[T], data: Any) -> T:
    """``cls`` from parsed JSON whose keys are exactly its fields, each value typed by its
    annotation: a file that is not this version's fails here, whole, saying where."""
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
    if origin in (list, tuple):  # every tuple here is tuple[X, ...]
        return origin(_typed(item, args[0]) for item in value)
    if origin is dict:
        # JSON keys are strings: an int key (a batch size) comes back from its digits.
        key = int if args[0] is int else args[0]
        return {key(k): _typed(v, args[1]) for k, v in value.items()}
    if isinstance(value, hint) or (hint is float and isinstance(value, int)):
        return value
    raise ValueError(f"expected {hint.__name__}, got {value!r}")


@dataclass(frozen=True)
class OtherLoad:
    """Cores other processes used, and steal: a figure measured while either is well above zero
    is lower than this machine's."""

    other_cores: float
    steal_cores: float


@dataclass(frozen=True)
class CpuProfile:
    """Where the machine's CPU went during a point's window: how many cores were busy (every
    process) and, per answer in the window, the CPU milliseconds of each part of the server and
    of the load generator (keys: :data:`resnet_mar.bench.machine.ROLES`)."""

    busy_cores: float
    ms_per_answer: dict[str, float]


@dataclass(frozen=True)
class ServedPoint:
    """``cpu``: None in runs from before it was measured."""

    load: LoadPoint
    other: OtherLoad
    cpu: CpuProfile | None = None


@dataclass(frozen=True)
class JpegPoint:
    pixels: str
    bytes: int
    load: LoadPoint


@dataclass(frozen=True)
class JpegSizes:
    small: JpegPoint
    large: JpegPoint
    p50_ratio_large_over_small: float


@dataclass(frozen=True)
class BoundBeside:
    """The exact-preprocessing bound's figures measured again right before and right after a
    setup's headline point (in this process, at the limit's batch and layout, while the server
    idles): the speed of this machine moves by tens of percent within minutes, so the served
    figure is held to the bound of its own minute, the mean of the two."""

    limit_img_per_s: tuple[float, ...]
    preprocessing_ms: tuple[float, ...]
    other: OtherLoad


@dataclass(frozen=True)
class ServedModel:
    """``bound_beside``: None for setups not held to the bound, and in older runs."""

    startup_s: float
    points: tuple[ServedPoint, ...]
    jpeg_size: JpegSizes | None = None
    bound_beside: BoundBeside | None = None

    def at(self, concurrency: int) -> ServedPoint | None:
        return next((p for p in self.points if p.load.concurrency == concurrency), None)


@dataclass(frozen=True)
class BusyModel:
    """Its share: its throughput now over its throughput alone at the same concurrency."""

    load: LoadPoint
    share_of_alone: float


@dataclass(frozen=True)
class AllBusy:
    concurrency_per_model: int
    models: dict[str, BusyModel]
    other: OtherLoad
    shares_sum: float


@dataclass(frozen=True)
class InProcessLimit:
    """The served file in this process, inference only: img/s at each layout and batch on all
    cores, the best of them (the limit), and on one thread at the limit's batch and layout."""

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


@dataclass
class ModelResults:
    """``preprocessing_ms``: exact preprocessing's CPU per photo, None until measured."""

    gflop_per_image: float
    in_process: dict[str, InProcessLimit] = field(default_factory=dict)
    served: dict[str, ServedModel] = field(default_factory=dict)
    preprocessing_ms: float | None = None

    def point(self, label: str, concurrency: int) -> ServedPoint | None:
        served = self.served.get(label)
        return served.at(concurrency) if served else None


@dataclass(frozen=True)
class MatmulPeak:
    """The best of ``calls`` float32 ``size`` x ``size`` matrix products on ``threads`` threads."""

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
    min_agreement: float
    max_error: float


@dataclass(frozen=True)
class Settings:
    """``int8_gate`` None: the run built no int8 model."""

    formats: tuple[str, ...]
    concurrencies: tuple[int, ...]
    duration_s: float
    warmup_s: float
    int8_gate: Int8Gate | None


@dataclass(frozen=True)
class HeadlineRow:
    """``value`` None: the run did not measure what the target needs, and the row fails."""

    check: str
    model: str
    value: float | None
    target: str
    passed: bool


@dataclass
class Results:
    """One run, filled as it goes. The stored headline is for readers of ``bench.json``; the
    report checks the targets again, so an edited verdict in a file cannot pass a figure."""

    started: str
    machine: Machine
    versions: dict[str, str]
    load_start: list[float]
    settings: Settings
    fp32_peak: MatmulPeak
    models: dict[str, ModelResults]
    all_busy: dict[str, AllBusy] = field(default_factory=dict)
    #: The empty handler at the headline concurrency (floor_handler.py); None in older runs.
    protocol_floor: ServedPoint | None = None
    load_end: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    headline: list[HeadlineRow] = field(default_factory=list)

    def limits(self) -> Iterator[tuple[str, str, ModelResults, InProcessLimit]]:
        for name, model in self.models.items():
            yield from ((name, fmt, model, limit) for fmt, limit in model.in_process.items())

    def points(self) -> Iterator[tuple[str, str, ServedPoint]]:
        for name, model in self.models.items():
            for label, served in model.served.items():
                yield from ((name, label, point) for point in served.points)
