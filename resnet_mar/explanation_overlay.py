"""An explanation as a picture: the server's attribution map laid over the part of the photo
the model saw, with a scale. The server answers where its crop lies on the upright photo, so
this needs no copy of the preprocessing, only the photo and the answer."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

#: Red for pixels that raised the class's score, blue for those that lowered it.
RAISED = np.array([220, 30, 30], dtype=np.float64)
LOWERED = np.array([30, 80, 230], dtype=np.float64)
#: The strongest colour's opacity; weaker attributions are more transparent.
MAX_OPACITY = 0.75
#: Attributions at or beyond this percentile of |value| get the full colour: a few extreme
#: pixels would otherwise wash out the rest.
SATURATION_PERCENTILE = 99.0
SCALE_WIDTH = 80


def photo_crop(photo: Image.Image, explanation: dict[str, Any], size: int) -> Image.Image:
    """The part of ``photo`` the model saw, as ``size`` x ``size`` RGB pixels."""
    upright = ImageOps.exif_transpose(photo).convert("RGB")
    expected = tuple(explanation["crop"]["image_size"])
    if upright.size != expected:
        raise ValueError(
            f"the explanation is of a {expected[0]}x{expected[1]} picture, this photo is "
            f"{upright.size[0]}x{upright.size[1]}: explain this photo itself"
        )
    box = tuple(explanation["crop"]["box"])
    return upright.resize((size, size), Image.Resampling.BILINEAR, box=box)


def colours(attributions: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-pixel colour and opacity of a signed map, and the |value| that saturates."""
    limit = float(np.percentile(np.abs(attributions), SATURATION_PERCENTILE)) or 1.0
    strength = np.clip(attributions / limit, -1.0, 1.0)
    colour = np.where(strength[..., None] >= 0, RAISED, LOWERED)
    return colour, np.abs(strength) * MAX_OPACITY, limit


def overlay(photo: Image.Image, explanation: dict[str, Any], size: int = 448) -> Image.Image:
    """The crop with the map over it (each map pixel a square block) and a scale on the right
    saying which value is full red or blue."""
    crop = np.asarray(photo_crop(photo, explanation, size), dtype=np.float64)
    attributions = np.asarray(explanation["attributions"], dtype=np.float64)
    rows, columns = attributions.shape
    colour, opacity, limit = colours(attributions)
    # nearest-neighbour upsampling: a block per map pixel, as the model saw it
    rows_at = np.arange(size) * rows // size
    columns_at = np.arange(size) * columns // size
    colour = colour[rows_at][:, columns_at]
    opacity = opacity[rows_at][:, columns_at][..., None]
    blended = crop * (1 - opacity) + colour * opacity
    picture = Image.new("RGB", (size + SCALE_WIDTH, size), "white")
    picture.paste(Image.fromarray(np.round(blended).astype(np.uint8)), (0, 0))
    _draw_scale(picture, size, limit, explanation)
    return picture


def _draw_scale(picture: Image.Image, size: int, limit: float, explanation: dict) -> None:
    draw = ImageDraw.Draw(picture)
    left, right = size + 10, size + 30
    levels = np.linspace(1.0, -1.0, size - 40)
    for offset, level in enumerate(levels):
        colour = RAISED if level >= 0 else LOWERED
        shade = 255 * (1 - abs(level) * MAX_OPACITY) + colour * abs(level) * MAX_OPACITY
        draw.line([(left, 20 + offset), (right, 20 + offset)], fill=tuple(int(c) for c in shade))
    draw.text((left, 2), f"+{limit:.2g}", fill="black")
    draw.text((left, size - 18), f"-{limit:.2g}", fill="black")
    draw.text((right + 4, size // 2 - 6), "0", fill="black")
    label = f"{explanation['label'][:10]}"
    draw.text((left, size // 2 + 10), label, fill="black")
