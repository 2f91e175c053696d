"""The ``handler:`` section of a model's model-config.yaml, validated when the model loads.

A bad value stops the model from loading with a clear message, never a request at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class HandlerSettings:
    """What the handler needs to know about its model, from model-config.yaml."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode
    topk: int = 5
    intra_op_threads: int = 1
    max_image_pixels: int = 50_000_000
    jpeg_draft_factor: int = 0
    model_format: str = "torchscript"
    #: Environment variables the archive was tuned with, as (name, value) pairs (see
    #: ``environment_advice``).
    worker_environment: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HandlerSettings:
        try:
            pre = config["preprocessing"]
            settings = cls(
                resize_size=int(pre["resize_size"]),
                crop_size=int(pre["crop_size"]),
                mean=tuple(float(m) for m in pre["mean"]),
                std=tuple(float(s) for s in pre["std"]),
                interpolation=InterpolationMode(pre.get("interpolation", "bilinear")),
                topk=int(config.get("topk", 5)),
                intra_op_threads=int(config.get("intra_op_threads", 1)),
                max_image_pixels=int(config.get("max_image_pixels", 50_000_000)),
                jpeg_draft_factor=int(config.get("jpeg_draft_factor", 0)),
                model_format=str(config.get("format", "torchscript")),
                worker_environment=tuple(
                    (str(name), str(value))
                    for name, value in (config.get("worker_environment") or {}).items()
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"model-config.yaml 'handler' section is invalid: {err!r}") from err
        if settings.jpeg_draft_factor < 0:
            raise ValueError("model-config.yaml: jpeg_draft_factor must be 0 (off) or >= 1")
        if min(settings.resize_size, settings.crop_size, settings.topk) < 1:
            raise ValueError("model-config.yaml: resize_size, crop_size and topk must be >= 1")
        return settings


def environment_advice(expected: tuple[tuple[str, str], ...], environ: Mapping[str, str]) -> str:
    """What to change in TorchServe's environment to serve as fast as the archive was tuned
    for, or "" when nothing. A worker cannot set these itself: OpenMP reads them when torch is
    loaded, before the handler is imported. So the handler says it in the log instead."""
    missing = " ".join(f"{name}={value}" for name, value in expected if environ.get(name) != value)
    if not missing:
        return ""
    return (
        f"TorchServe was started without {missing} (handler.worker_environment in the archive's "
        "model-config.yaml): answers stay the same, but under load they come slower. Start it "
        f"as `{missing} torchserve --start ...`; `make serve` does."
    )
