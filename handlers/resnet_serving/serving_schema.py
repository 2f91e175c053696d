"""What an archive's ``model-config.yaml`` holds: the one schema the build writes and the
handler reads.

TorchServe reads the top-level keys (workers, batching, timeouts); the handler reads the whole
file, ``handler:`` included. Both sides go through :class:`ModelConfig`: the build constructs it
and writes ``to_dict()``, the worker reads it back with ``from_dict()``, which refuses unknown and
missing keys, so a key renamed on one side fails the model's load with a message instead of
silently falling back to a default. Every default is stated once, here, on its field; why each
value was chosen is measured in docs/benchmark/settings.md.

This module imports only the standard library: the build side imports it too (never the other
way round), and an archive must load on any TorchServe host.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: Serialized formats the build exports and the handler's runtimes load (model_runtimes.py).
MODEL_FORMATS = ("torchscript", "onnx", "aoti", "openvino", "int8")
#: Resampling filters ``resize_crop.py`` reproduces exactly (torchvision's names).
INTERPOLATIONS = ("bilinear", "bicubic")
#: ``intra_op_threads`` value that means "as many as the worker's CPUs" (see cpu_budget.py).
AUTO = "auto"


class SchemaError(ValueError):
    """A model-config.yaml (or a build request) that breaks the schema; says which key."""


@dataclass(frozen=True)
class Preprocessing:
    """The input pipeline of the weights entry (torchvision's ``ImageClassification``)."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def __post_init__(self) -> None:
        if not 1 <= self.crop_size <= self.resize_size:
            raise SchemaError(
                f"preprocessing: need 1 <= crop_size <= resize_size, got crop_size "
                f"{self.crop_size}, resize_size {self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SchemaError("preprocessing: mean and std need 3 values each, std > 0")
        _one_of("preprocessing.interpolation", self.interpolation, INTERPOLATIONS)


@dataclass(frozen=True)
class HandlerSettings:
    """The ``handler:`` section: what the handler needs to know about its model."""

    architecture: str
    model_format: str
    preprocessing: Preprocessing
    #: Environment variables TorchServe's workers are tuned for; decided by
    #: resnet_mar/worker_environment.py, checked by the handler (it can only warn: OpenMP reads
    #: them before any handler code runs).
    worker_environment: dict[str, str]
    #: "auto": the CPUs the worker may use, found when it loads (affinity, cgroup quota), so an
    #: archive built on 16 cores does not oversubscribe the 2 it is served on. A number pins it.
    intra_op_threads: int | str = AUTO
    #: Classes answered per image unless the request asks for another number.
    topk: int = 5
    #: Refused (413) from the header, before decoding: a decompression bomb costs nothing.
    max_image_pixels: int = 50_000_000
    #: Refused (413) from the header too: an RGB picture of the image's size in Pillow's memory
    #: (4 bytes a pixel, 8 a row), which pixels alone do not bound (a one-pixel-wide strip costs
    #: 12 bytes a pixel). It is also what the worker's decoding threads hold at once: decoding
    #: one image peaks at about 3 times its own share, so at about 3 times this per worker.
    max_decoded_bytes: int = 200 * 2**20
    #: Refused (413) from the markers: each scan of a progressive JPEG decodes the whole picture
    #: again (about 10 is usual), so a small file repeating a scan could hold the CPU for minutes.
    max_jpeg_scans: int = 32
    #: Images one KServe v1 / Open Inference request may carry (413 beyond): all the images of
    #: a TorchServe batch go through one forward pass, so this bounds what one batch can cost.
    max_images_per_request: int = 32
    #: The largest answer the handler sends, in bytes (413 beyond, before TorchServe sees it):
    #: under config.properties' max_response_size (1 MiB), past which TorchServe kills the
    #: worker and fails its whole batch. Bounds images x top-k x outputs.
    max_answer_bytes: int = 900_000
    #: 0: decode JPEGs fully (answers equal the in-process reference). N >= 1: a JPEG at least
    #: 2N x resize_size on its shorter side is decoded at reduced scale (faster, answers move).
    jpeg_draft_factor: int = 0
    #: Integrated-gradients explanations (explanations.py): points on the path from the black
    #: picture to the image, each a forward and a backward pass of one image. The cost of one
    #: explanation grows with it (measured in the README: Explanations); Captum's convergence
    #: delta shrinks with it.
    ig_steps: int = 32
    #: Images per forward and backward pass of an explanation: bounds its memory (about 50 MB
    #: per image for resnet50: a worker peaked at 1.2 GB with 4, 1.4 GB with 8), not its time.
    ig_internal_batch: int = 8
    #: Share of the worker's time explanations may take (explanation_turns.py): one image per
    #: batch, then a pause in proportion; the explanations that come meanwhile get 503 at once.
    explanation_share: float = 0.5

    def __post_init__(self) -> None:
        _one_of("handler.model_format", self.model_format, MODEL_FORMATS)
        if self.intra_op_threads != AUTO and not (
            isinstance(self.intra_op_threads, int) and self.intra_op_threads >= 1
        ):
            raise SchemaError(
                f"handler.intra_op_threads must be {AUTO!r} or a number >= 1, "
                f"got {self.intra_op_threads!r}"
            )
        _at_least("handler.topk", self.topk, 1)
        _at_least("handler.max_image_pixels", self.max_image_pixels, 1)
        _at_least("handler.max_decoded_bytes", self.max_decoded_bytes, 1)
        _at_least("handler.max_jpeg_scans", self.max_jpeg_scans, 1)
        _at_least("handler.max_images_per_request", self.max_images_per_request, 1)
        _at_least("handler.max_answer_bytes", self.max_answer_bytes, 1024)
        _at_least("handler.jpeg_draft_factor", self.jpeg_draft_factor, 0)
        _at_least("handler.ig_steps", self.ig_steps, 1)
        _at_least("handler.ig_internal_batch", self.ig_internal_batch, 1)
        if not 0 < self.explanation_share <= 1:
            raise SchemaError(
                f"handler.explanation_share must be in (0, 1], got {self.explanation_share!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The whole ``model-config.yaml``; TorchServe's own keys carry its camelCase names."""

    handler: HandlerSettings
    #: One worker with all the CPUs (intra-op threads) per model; the compute gate makes the
    #: models of a server take turns (see compute_gate.py).
    min_workers: int = field(default=1, metadata={"key": "minWorkers"})
    max_workers: int = field(default=1, metadata={"key": "maxWorkers"})
    batch_size: int = field(default=8, metadata={"key": "batchSize"})
    max_batch_delay_ms: int = field(default=1, metadata={"key": "maxBatchDelay"})
    response_timeout_s: int = field(default=120, metadata={"key": "responseTimeout"})
    startup_timeout_s: int = field(default=300, metadata={"key": "startupTimeout"})
    #: Past this many waiting requests TorchServe answers 503 at once instead of queueing.
    job_queue_size: int = field(default=256, metadata={"key": "jobQueueSize"})
    device_type: str = field(default="cpu", metadata={"key": "deviceType"})
    #: A worker failing to load for longer than this makes TorchServe's /ping answer Unhealthy
    #: (the readiness signal KServe's probe reads); TorchServe's own default is 5 minutes.
    max_retry_timeout_s: int = field(default=60, metadata={"key": "maxRetryTimeoutInSec"})

    def __post_init__(self) -> None:
        _at_least("minWorkers", self.min_workers, 1)
        _at_least("maxWorkers", self.max_workers, self.min_workers)
        _at_least("batchSize", self.batch_size, 1)
        _at_least("maxBatchDelay", self.max_batch_delay_ms, 0)
        _at_least("responseTimeout", self.response_timeout_s, 1)
        _at_least("startupTimeout", self.startup_timeout_s, 1)
        _at_least("jobQueueSize", self.job_queue_size, 1)
        _one_of("deviceType", self.device_type, ("cpu",))
        _at_least("maxRetryTimeoutInSec", self.max_retry_timeout_s, 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data: TorchServe's keys first, then ``handler``."""
        found = _to_dict(self)
        found["handler"] = found.pop("handler")
        return found

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        """Read a parsed model-config.yaml; raise :class:`SchemaError` naming what is wrong."""
        return _from_dict(cls, data, "model-config.yaml")


T = TypeVar("T")


def _key(item: dataclasses.Field) -> str:
    return item.metadata.get("key", item.name)


def _to_dict(instance: Any) -> dict[str, Any]:
    found = {}
    for item in dataclasses.fields(instance):
        value = getattr(instance, item.name)
        if dataclasses.is_dataclass(value):
            value = _to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        found[_key(item)] = value
    return found


def _from_dict(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise SchemaError(f"{where} must be a mapping, got {type(data).__name__}")
    items = {_key(item): item for item in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in data if key not in items)
    missing = sorted(key for key in items if key not in data)
    if unknown or missing:
        raise SchemaError(
            f"{where}: "
            + "; ".join(
                part
                for part in (
                    f"unknown keys {unknown}" if unknown else "",
                    f"missing keys {missing}" if missing else "",
                )
                if part
            )
            + " (the archive and the handler disagree: rebuild it with this toolkit)"
        )
    hints = typing.get_type_hints(cls)
    values = {
        item.name: _typed(data[key], hints[item.name], f"{where}: {key}")
        for key, item in items.items()
    }
    return cls(**values)


def _typed(value: Any, expected: Any, where: str) -> Any:
    """``value`` as the annotated type, or a :class:`SchemaError`."""
    if dataclasses.is_dataclass(expected):
        return _from_dict(expected, value, where)
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{where} must be a list, got {value!r}")
        return tuple(_typed(item, args[0], where) for item in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SchemaError(f"{where} must be a mapping, got {value!r}")
        return {_typed(k, args[0], where): _typed(v, args[1], where) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, where)
            except SchemaError:
                continue
        raise SchemaError(f"{where} must be one of {[a.__name__ for a in args]}, got {value!r}")
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise SchemaError(f"{where} must be {expected.__name__}, got {value!r}")


def _at_least(key: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise SchemaError(f"{key} must be >= {lowest}, got {value}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SchemaError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
