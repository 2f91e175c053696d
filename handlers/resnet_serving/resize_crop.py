"""The geometric half of torchvision's ``ImageClassification``: resize the shorter side, then
take the centre crop; bit-identical to it, with work bounded by the crop, not the image's shape.

torchvision resizes the whole picture before cropping. For a thin picture that is ruinous: a
109-byte 8192x1 PNG resized to a shorter side of 256 becomes 2,097,152 x 256 pixels (2 GB in
Pillow) of which 224 x 224 are kept. So:

* up to :data:`PILLOW_MAX_ASPECT` (every ordinary photo), Pillow does exactly what torchvision
  does (its C code is the fastest here); its intermediate images are then at most
  ``resize_size x PILLOW_MAX_ASPECT`` wide by the source's height, a few megapixels;
* beyond, only the crop's pixels are computed, with Pillow's own arithmetic (Pillow 13's
  ``Resample.c``): the same filter coefficients in double precision for the same output
  positions, the same fixed-point rounding, the same pass order, so the pixels are identical to
  resize-then-crop while the work is that of the crop's neighbourhood.

Pillow's ``resize(box=...)`` cannot do the second part: it takes the box in single precision,
which moves every filter centre slightly (measured: 1-2 grey levels off in most cases).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Longer / shorter side up to which Pillow resizes the whole picture (then crops).
PILLOW_MAX_ASPECT = 16
#: Pillow's fixed-point precision for 8-bit images (``PRECISION_BITS`` in Resample.c).
PRECISION_BITS = 32 - 8 - 2
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resized_center_crop(
    image: Image.Image, resize_size: int, crop_size: int, interpolation: str
) -> np.ndarray:
    """An RGB picture -> the crop_size x crop_size x 3 uint8 pixels torchvision's
    ``CenterCrop(crop_size)(Resize(resize_size, antialias=True)(image))`` gives."""
    width, height = image.size
    new_width, new_height = resized_size(width, height, resize_size)
    top = round((new_height - crop_size) / 2.0)  # torchvision center_crop's rounding
    left = round((new_width - crop_size) / 2.0)
    if max(width, height) <= PILLOW_MAX_ASPECT * min(width, height):
        resized = image.resize((new_width, new_height), _RESAMPLE[interpolation])
        # np.array, not asarray: a writable copy (150 KB), which torch.from_numpy expects
        return np.array(resized.crop((left, top, left + crop_size, top + crop_size)))
    return _crop_window(
        np.asarray(image), (new_width, new_height), (left, top), crop_size, interpolation
    )


def crop_box(
    width: int, height: int, resize_size: int, crop_size: int
) -> tuple[float, float, float, float]:
    """Where the crop :func:`resized_center_crop` takes lies in the source picture (left, top,
    right, bottom, in its pixels): what a client needs to lay an explanation over the photo
    without reproducing the preprocessing."""
    new_width, new_height = resized_size(width, height, resize_size)
    top = round((new_height - crop_size) / 2.0)
    left = round((new_width - crop_size) / 2.0)
    scale_x, scale_y = width / new_width, height / new_height
    return (
        left * scale_x,
        top * scale_y,
        min((left + crop_size) * scale_x, width),  # never past the edge by a rounding
        min((top + crop_size) * scale_y, height),
    )


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision's output size for ``Resize(resize_size)``: the shorter side becomes
    ``resize_size``, the longer keeps the aspect ratio (truncated)."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def _crop_window(
    pixels: np.ndarray,
    new_size: tuple[int, int],
    corner: tuple[int, int],
    crop_size: int,
    interpolation: str,
) -> np.ndarray:
    """Pillow's two-pass resize of ``pixels`` to ``new_size``, computed for the crop alone."""
    height, width = pixels.shape[:2]
    (new_width, new_height), (left, top) = new_size, corner
    rows_from, row_weights = _coefficients(height, new_height, top, crop_size, interpolation)
    cols_from, col_weights = _coefficients(width, new_width, left, crop_size, interpolation)
    # The source rows and columns the crop reads, and nothing else.
    row0 = int(rows_from.min())
    row1 = min(int((rows_from + row_weights.shape[1]).max()), height)
    col0 = int(cols_from.min())
    col1 = min(int((cols_from + col_weights.shape[1]).max()), width)
    window = pixels[row0:row1, col0:col1]

    def horizontal(part: np.ndarray) -> np.ndarray:
        if new_width == width:
            return part
        return _pass(part, cols_from - col0, col_weights, axis=1)

    def vertical(part: np.ndarray) -> np.ndarray:
        if new_height == height:
            return part
        return _pass(part, rows_from - row0, row_weights, axis=0)

    # Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as
    # the width (ImagingResampleInner); the order changes the rounding between passes.
    shrink_h, shrink_w = height - new_height, width - new_width
    if shrink_h > 0 and shrink_h > shrink_w * 2:
        return horizontal(vertical(window))
    return vertical(horizontal(window))


def _coefficients(
    in_size: int, out_size: int, first: int, count: int, interpolation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` for output positions
    ``first .. first + count``: where each reads from, and its fixed-point weights."""
    kernel, kernel_support = _FILTERS[interpolation]
    scale = float(np.float32(in_size)) / out_size  # (double)(in1 - in0) / outSize, in floats
    filter_scale = max(scale, 1.0)
    support = kernel_support * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    center = (np.arange(first, first + count, dtype=np.float64) + 0.5) * scale
    starts = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate
    lengths = np.minimum((center + support + 0.5).astype(np.int64), in_size) - starts
    offsets = np.arange(taps)
    used = offsets[None, :] < lengths[:, None]
    weights = np.where(
        used,
        kernel(
            ((offsets[None, :] + starts[:, None]) - center[:, None] + 0.5) * (1.0 / filter_scale)
        ),
        0.0,
    )
    total = np.zeros(count)
    for tap in range(taps):  # in order, as C sums: a pairwise sum would round differently
        total = total + weights[:, tap]
    weights = np.where(
        total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights
    )
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64)
    return starts, fixed


def _pass(pixels: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One 8-bit resampling pass along ``axis`` (0: rows, 1: columns), one filter tap at a time
    so that memory stays at one output-sized accumulator."""
    last = pixels.shape[axis] - 1
    out_shape = list(pixels.shape)
    out_shape[axis] = len(starts)
    total = np.full(out_shape, 1 << (PRECISION_BITS - 1), dtype=np.int64)
    for tap in range(weights.shape[1]):
        taken = np.take(pixels, np.minimum(starts + tap, last), axis=axis).astype(np.int64)
        tap_weights = weights[:, tap]
        total += taken * (tap_weights[:, None, None] if axis == 0 else tap_weights[None, :, None])
    return np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


#: Filter and its support (Pillow's BILINEAR and BICUBIC).
_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}
