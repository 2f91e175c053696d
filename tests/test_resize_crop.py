"""Resize and centre crop: bit-identical to torchvision whatever the shape, with work bounded by
the crop for thin images (a 109-byte 8192x1 PNG used to cost the worker 2 GB)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from resnet_serving import resize_crop
from resnet_serving.resize_crop import resized_center_crop
from tests.photos import PHOTOS


def torchvision_crop(image: Image.Image, resize: int, crop: int, interpolation: str) -> np.ndarray:
    resized = F.resize(
        image, [resize], interpolation=InterpolationMode(interpolation), antialias=True
    )
    return np.asarray(F.center_crop(resized, [crop]))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PHOTOS["astronaut"]).convert("RGB")


#: Shapes from square to 1-pixel-thin, both orientations; the torchvision reference must stay
#: affordable (its resized picture is resize x resize x aspect ratio).
SHAPES = st.tuples(st.integers(1, 700), st.integers(1, 700)).filter(
    lambda wh: max(wh) / min(wh) <= 300
)


@pytest.mark.parametrize("window", [False, True], ids=["pillow-path", "window-path"])
@given(
    shape=SHAPES,
    sizes=st.sampled_from([(256, 224), (232, 224), (224, 224), (64, 7)]),
    interpolation=st.sampled_from(["bilinear", "bicubic"]),
)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_both_paths_equal_torchvision(photo, window, shape, sizes, interpolation) -> None:
    """Each path, forced for every shape, gives torchvision's pixels exactly."""
    image = photo.resize(shape)
    resize, crop = sizes
    original = resize_crop.PILLOW_MAX_ASPECT
    resize_crop.PILLOW_MAX_ASPECT = 0 if window else 10**9
    try:
        ours = resized_center_crop(image, resize, crop, interpolation)
    finally:
        resize_crop.PILLOW_MAX_ASPECT = original
    assert ours.shape == (crop, crop, 3)
    assert np.array_equal(ours, torchvision_crop(image, resize, crop, interpolation))


def test_real_photos_take_pillows_path_and_thin_ones_the_window(photo, monkeypatch) -> None:
    taken = []
    monkeypatch.setattr(
        resize_crop, "_crop_window", lambda *args: taken.append(args[0].shape) or np.zeros(1)
    )
    resized_center_crop(photo.resize((640, 480)), 256, 224, "bilinear")
    assert taken == []
    resized_center_crop(photo.resize((4000, 200)), 256, 224, "bilinear")
    assert taken == [(200, 4000, 3)]


#: A subprocess decodes and crops one thin image per format through the handler's own stages
#: and reports its peak memory (ru_maxrss) and time. It imports torch first, so the baseline is
#: what a worker starts from.
MEASURE = """
import io, json, resource, sys, time
import torch
from PIL import Image
from resnet_handler import decode_image
from resnet_serving.serving_schema import HandlerSettings, Preprocessing
pre = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
settings = HandlerSettings("resnet18", "torchscript", pre, {})
files = json.loads(sys.stdin.read())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
found = {}
for name, data in files.items():
    start = time.perf_counter()
    crop = decode_image(bytes.fromhex(data), settings)
    found[name] = {"shape": list(crop.shape), "s": time.perf_counter() - start}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_mb": (peak - before) / 1024, "found": found}))
"""

#: The thinnest each format allows (JPEG stops at 65,500 pixels a side, WebP at 16,383).
THIN = {
    "PNG": [(65536, 1), (1, 65536), (8192, 1)],
    "GIF": [(65535, 1), (1, 65535)],
    "TIFF": [(65536, 1), (1, 65536)],
    "WEBP": [(16383, 1), (1, 16383)],
    "JPEG": [(65500, 1), (1, 65500)],
    "BMP": [(65536, 1), (1, 65536)],
}


def test_thin_images_of_every_format_cost_little_time_and_memory() -> None:
    files = {}
    for fmt, shapes in THIN.items():
        for width, height in shapes:
            buffer = io.BytesIO()
            Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, fmt)
            files[f"{fmt} {width}x{height}"] = buffer.getvalue().hex()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE],
        input=json.dumps(files),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name, found in report["found"].items():
        assert found["shape"] == [3, 224, 224], (name, found)
    # Before: 2 GB for 8192x1 and 19.9 GB for 65536x1. Now the decoded rows (65536 x 4 bytes)
    # and the crop's window, a few MB.
    assert report["grew_mb"] < 100, report  # the report carries each image's seconds
