"""Bytes in, one RGB picture out, or a :class:`BadInput` saying what is wrong with the bytes.

Conventions (what a viewer shows is what gets classified):
* EXIF orientation is applied;
* transparency is composited onto white;
* 16-bit samples are scaled to 8-bit (value / 257);
* animations (GIF, WebP, multi-frame TIFF) use their first frame.

Safety: only the formats below are decoded (Pillow's other plugins never run on user bytes), and
the pixel count is checked from the header, before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from resnet_serving.input_errors import BadInput, bad_request

# (phone photos in MPO format open through the JPEG plugin.)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: How files in the supported formats begin, to tell a broken one from a body that is no image.
#: (BMP's two letters "BM" are left out: too much text starts that way.)
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}

ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_rgb(data: bytes, *, max_pixels: int, draft_min_side: int = 0) -> Image.Image:
    """Decode ``data`` into an RGB image following the module's conventions.

    ``draft_min_side``: a JPEG whose both sides are at least twice this is decoded at the
    largest 1/2, 1/4 or 1/8 scale that keeps both sides >= it (Pillow draft mode).
    """
    if not data:
        raise bad_request("EmptyBody", "the request body is empty: send an image")
    image = open_checked(data, max_pixels)
    if draft_min_side and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_min_side, draft_min_side))
    try:
        image.load()
    except Exception as err:  # Pillow raises many types on corrupt data
        raise _undecodable(f"the {image.format} data cannot be decoded", err) from None
    return to_rgb(_apply_orientation(image))


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only: format and size are checked before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInput(413, "ImageTooLarge", str(err)) from None
    except Exception as err:
        claimed = _claimed_format(data) or "image"
        raise _undecodable(f"the {claimed} header cannot be read", err) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise bad_request("CorruptImage", f"the image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise BadInput(
            413,
            "ImageTooLarge",
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels",
        )
    return image


def _undecodable(what: str, err: Exception) -> BadInput:
    """A file cut short (an upload that stopped, a partial copy) says so; the rest is corrupt."""
    kind = "TruncatedImage" if "truncated" in str(err).lower() else "CorruptImage"
    return bad_request(kind, f"{what}: {err}")


def _unidentified(data: bytes) -> BadInput:
    """Tell 'a broken file in a format we take' and 'an image in a format we do not take' from
    'not an image at all'."""
    claimed = _claimed_format(data)
    if claimed:
        return bad_request(
            "CorruptImage",
            f"the body starts like a {claimed} file but its header cannot be read: the file is "
            "truncated or corrupt",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other_format = Image.open(io.BytesIO(data)).format
    except Exception:
        other_format = None
    if other_format:
        return BadInput(
            415,
            "UnsupportedImageFormat",
            f"{other_format} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}",
        )
    return bad_request(
        "NotAnImage",
        f"the body ({len(data)} bytes) is not an image in a supported format "
        f"({', '.join(SUPPORTED_FORMATS)}) nor base64 of one",
    )


def _claimed_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block only loses the orientation, not the picture
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit RGB (see the module conventions)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bit(image)
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as err:
        raise BadInput(
            415, "UnsupportedImageMode", f"{image.mode} images cannot be converted to RGB: {err}"
        ) from None


def _sixteen_to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit grey (value // 257). A transparent grey value (PNG tRNS) becomes an
    alpha channel first: after scaling, 256 other values would share it, and Pillow would keep
    only its low byte."""
    samples = np.asarray(image.convert("I"))
    grey = Image.fromarray(np.clip(samples // 257, 0, 255).astype(np.uint8))
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8))
    return Image.merge("LA", (grey, alpha))
