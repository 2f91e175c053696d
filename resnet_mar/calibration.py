"""The real photos an int8 model is calibrated on, and the ones its quality is checked on.

Post-training quantization sets each layer's int8 range from the activations real inputs give,
so calibration uses real photos, never noise: by default twelve photos that ship inside the
packages the toolkit installs (scikit-image's and matplotlib's sample data), each seen as the
model sees it (its weights entry's preprocessing) and as a dozen random crops and flips of it;
with CALIBRATION=folder, the user's own images (ImageNet-like photos for pretrained weights).

The quality gate is checked on photos held aside from calibration: by default the five photos
the tests serve; from a folder, every fifth image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2

from resnet_mar.photos import CALIBRATION_FILES, PhotosMissingError, photo_paths
from resnet_mar.weights import reference_transforms
from resnet_serving.serving_schema import Preprocessing

#: Images the calibration set holds: each photo once as served, the rest random views of them.
CALIBRATION_SIZE = 160
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class CalibrationError(ValueError):
    """The calibration photos cannot be used; says which and why."""


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed images (N x 3 x crop x crop, normalised as the model is fed)."""

    images: torch.Tensor
    held_aside: torch.Tensor
    sources: list[str]
    held_aside_sources: list[str]


def calibration_set(
    preprocessing: Preprocessing, folder: Path | None = None, seed: int = 0
) -> CalibrationSet:
    """The calibration images and the held-aside photos for a model with ``preprocessing``."""
    calibrate, held = _photos(folder)
    transform = reference_transforms(preprocessing)
    pictures = [_open(path) for path in calibrate]
    views = v2.Compose(
        [
            v2.RandomResizedCrop(preprocessing.resize_size, scale=(0.3, 1.0)),
            v2.RandomHorizontalFlip(),
        ]
    )
    torch.manual_seed(seed)
    images = [transform(picture) for picture in pictures]
    while len(images) < CALIBRATION_SIZE:
        images.append(transform(views(pictures[len(images) % len(pictures)])))
    return CalibrationSet(
        images=torch.stack(images),
        held_aside=torch.stack([transform(_open(path)) for path in held]),
        sources=[str(path) for path in calibrate],
        held_aside_sources=[str(path) for path in held],
    )


def _photos(folder: Path | None) -> tuple[list[Path], list[Path]]:
    if folder is None:
        try:
            return list(photo_paths(CALIBRATION_FILES).values()), list(photo_paths().values())
        except PhotosMissingError as err:
            raise CalibrationError(str(err)) from None
    if not folder.is_dir():
        raise CalibrationError(f"CALIBRATION={folder} is not a folder of images")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(found) < 10:
        raise CalibrationError(
            f"CALIBRATION={folder} holds {len(found)} images: give at least 10 (every fifth is "
            "held aside to check the int8 model; a few hundred representative photos are best)"
        )
    return [p for i, p in enumerate(found) if i % 5], found[::5]


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise CalibrationError(f"calibration image {path} cannot be read: {err}") from err
