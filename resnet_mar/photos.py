"""Real photos the build runs a compiled model on: the parity check's inputs (both JITs), the
example ``JIT=trace`` records the model's run on, and the photos an int8 model is calibrated on
(resnet_mar/calibration.py; the parity photos are then held aside to check it).

Random inputs alone are not what a server sees, and a trace that took the wrong branch for real
pictures could pass on them. These photos ship inside two packages, scikit-image's sample data
and matplotlib's, so a build needs no download. Both are development dependencies that
``make setup`` installs; without them a build stops with a message saying so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from resnet_mar.weights import reference_transforms
from resnet_serving.serving_schema import Preprocessing

#: Where each photo lives: (package, file inside its data folder).
PHOTO_FILES = {
    "chelsea": ("skimage", "chelsea.png"),  # cat, 451x300 RGB PNG
    "coffee": ("skimage", "coffee.png"),  # 600x400 RGB PNG
    "astronaut": ("skimage", "astronaut.png"),  # 512x512 RGB PNG
    "rocket": ("skimage", "rocket.jpg"),  # 427x640 JPEG
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),  # 512x600 JPEG
}


#: Calibration photos for FORMAT=int8: none of the photos above, so that those stay held aside.
CALIBRATION_FILES = {
    name: ("skimage", name)
    for name in (
        "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg",
        "ihc.png", "camera.png", "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png",
    )
} | {"Minduka_Present_Blue_Pack.png": ("matplotlib", "Minduka_Present_Blue_Pack.png")}  # fmt: skip


class PhotosMissingError(RuntimeError):
    """Raised when the sample photos' packages are not installed; says how to get them."""


def data_folders() -> dict[str, Path]:
    """Each package's folder of sample files, imported only when a build needs them."""
    try:
        import matplotlib
        import skimage.data
    except ImportError as err:
        raise PhotosMissingError(
            f"the build checks every compiled model on real photos from scikit-image and "
            f"matplotlib, and cannot import {err.name}: install them with "
            f"`.venv/bin/pip install -e '.[dev]'` (make setup does)"
        ) from None
    return {
        "skimage": Path(skimage.data.__file__).parent,
        "matplotlib": Path(matplotlib.get_data_path()) / "sample_data",
    }


def photo_paths(files: dict[str, tuple[str, str]] = PHOTO_FILES) -> dict[str, Path]:
    """Every photo of ``files`` (:data:`PHOTO_FILES` by default) by name; raises if one is
    missing."""
    folders = data_folders()
    paths = {name: folders[package] / file for name, (package, file) in files.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise PhotosMissingError(f"sample photos missing from their packages: {missing}")
    return paths


def photo_tensors(preprocessing: Preprocessing) -> dict[str, torch.Tensor]:
    """Each photo as the model sees it (3 x crop x crop, normalised), prepared by torchvision's
    own transform of the weights entry, so the check does not rely on the handler's code."""
    transform = reference_transforms(preprocessing)
    return {
        name: transform(Image.open(path).convert("RGB")) for name, path in photo_paths().items()
    }
