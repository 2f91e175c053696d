"""The ``handler:`` section of a model's model-config.yaml, validated when the model loads.

A bad value stops the model from loading with a clear message, never a request at run time.
"""

from __future__ import annotations

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
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"model-config.yaml 'handler' section is invalid: {err!r}") from err
        if settings.jpeg_draft_factor < 0:
            raise ValueError("model-config.yaml: jpeg_draft_factor must be 0 (off) or >= 1")
        if min(settings.resize_size, settings.crop_size, settings.topk) < 1:
            raise ValueError("model-config.yaml: resize_size, crop_size and topk must be >= 1")
        return settings
