"""The supported architectures: the one list every other module asks.

torchvision already knows how to build each of these and which weights entries exist for it,
so this module only names the family and refuses anything outside it early, at build time.
"""

from __future__ import annotations

from enum import Enum

import torch
import torchvision

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


class UnknownArchitectureError(ValueError):
    """Raised for a model name outside the ResNet family this toolkit supports."""


def check_architecture(name: str) -> str:
    """Return ``name`` when supported; otherwise fail listing the valid names."""
    if name not in SUPPORTED_ARCHITECTURES:
        valid = ", ".join(SUPPORTED_ARCHITECTURES)
        raise UnknownArchitectureError(f"unknown model {name!r}; valid models: {valid}")
    return name


def weights_enum(name: str) -> type[Enum]:
    """The torchvision weights enum (e.g. ``ResNet50_Weights``) of a supported architecture."""
    return torchvision.models.get_model_weights(check_architecture(name))


def build_untrained(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """An architecture with freshly initialised weights and ``num_classes`` outputs."""
    return torchvision.models.get_model(
        check_architecture(name), weights=None, num_classes=num_classes
    )
