"""The explanation overlay without a server: the crop it draws on is the answered box of the
upright photo, each map pixel colours its block by sign and strength, and the scale is drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resnet_mar.explanation_overlay import (
    LOWERED,
    MAX_OPACITY,
    RAISED,
    SCALE_WIDTH,
    overlay,
    photo_crop,
)
from resnet_serving.resize_crop import crop_box


def explanation_of(photo: Image.Image, attributions: np.ndarray) -> dict:
    box = crop_box(*photo.size, 256, 224)
    return {
        "label": "tabby",
        "attributions": attributions.tolist(),
        "crop": {"box": list(box), "image_size": list(photo.size)},
    }


def test_blocks_are_coloured_by_sign_and_strength_over_the_crop(photos) -> None:
    photo = Image.open(photos["chelsea"])
    attributions = np.zeros((224, 224))
    attributions[:112, :112] = 2.0  # raised the class: full red
    attributions[112:, 112:] = -2.0  # lowered it: full blue
    attributions[:112, 112:] = 1e-9  # next to nothing: the photo shows through
    explanation = explanation_of(photo, attributions)
    size = 224
    picture = overlay(photo, explanation, size)
    assert picture.size == (size + SCALE_WIDTH, size)
    drawn = np.asarray(picture, dtype=np.float64)[:, :size]
    crop = np.asarray(photo_crop(photo, explanation, size), dtype=np.float64)
    expected_red = crop[:112, :112] * (1 - MAX_OPACITY) + RAISED * MAX_OPACITY
    expected_blue = crop[112:, 112:] * (1 - MAX_OPACITY) + LOWERED * MAX_OPACITY
    assert np.abs(drawn[:112, :112] - expected_red).max() <= 0.5
    assert np.abs(drawn[112:, 112:] - expected_blue).max() <= 0.5
    assert np.abs(drawn[:112, 112:] - crop[:112, 112:]).max() <= 1.0
    scale = np.asarray(picture, dtype=np.float64)[20 : size - 20, size + 10 : size + 30]
    assert scale[0, 0, 0] > scale[0, 0, 2] and scale[-1, 0, 2] > scale[-1, 0, 0]


def test_a_photo_other_than_the_explained_one_is_refused(photos) -> None:
    photo = Image.open(photos["chelsea"])
    explanation = explanation_of(photo, np.zeros((224, 224)))
    explanation["crop"]["image_size"] = [10, 10]
    with pytest.raises(ValueError, match="explain this photo itself"):
        overlay(photo, explanation)
