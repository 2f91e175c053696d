"""Bytes in, one RGB picture out, or a :class:`BadInput` saying what is wrong with the bytes.

Conventions (what a viewer shows is what gets classified):
* EXIF orientation is applied;
* transparency is composited onto white;
* 16-bit samples are scaled to 8-bit (value / 257);
* animations (GIF, WebP, multi-frame TIFF) use their first frame.

Safety: only the formats below are decoded (Pillow's other plugins never run on user bytes), and
what decoding will cost is checked from the header, before any pixel is decoded: the pixel count
(decompression bombs), the memory of the decoded picture (a one-pixel-wide strip costs three
times its pixels in row bookkeeping), and a JPEG's number of scans (each progressive scan passes
over the whole picture again: a small file repeating one scan thousands of times would hold the
CPU for minutes). Decoding then keeps one full-size picture alive at a time where it can.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

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

#: Bytes Pillow holds per pixel of an RGB picture, and per row (the row pointer).
_RGB_PIXEL_BYTES = 4
_ROW_BYTES = 8
#: The EXIF orientation tag, and its values that turn the picture a quarter (width and height
#: swap places).
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)
#: glibc's mallopt parameter for the number of malloc arenas (malloc.h).
_M_ARENA_MAX = -8
#: Markers that stand alone in a JPEG (no length follows): TEM, RST0-7, SOI, EOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})

ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeBudget:
    """Decoded bytes a worker's decoding threads may hold at once: each image holds its own
    size (:func:`decoded_bytes`) from its decoding to its crop, so the large images of a batch
    decode one after another instead of all at once, and small ones still in parallel."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def held(self, amount: int) -> Iterator[None]:
        with self._changed:
            # an image larger than the whole budget (never, after open_checked) runs alone
            self._changed.wait_for(lambda: self._used == 0 or self._used + amount <= self.capacity)
            self._used += amount
        try:
            yield
        finally:
            with self._changed:
                self._used -= amount
                self._changed.notify_all()


def share_one_malloc_arena() -> bool:
    """Make the process's threads allocate from one glibc arena (``M_ARENA_MAX`` = 1), before
    the decoding threads start. With an arena per thread, memory a thread freed after a large
    image stays in its arena, where the next large image, decoded on another thread, cannot
    reuse it: two threads held twice :class:`DecodeBudget`'s bound. False where the C library
    is not glibc (the bound then holds per thread)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def decoded_bytes(width: int, height: int) -> int:
    """What one RGB picture of this size takes in Pillow: the unit of the decoding bounds."""
    return height * (width * _RGB_PIXEL_BYTES + _ROW_BYTES)


def decode_rgb(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int,
    max_jpeg_scans: int,
    draft_min_side: int = 0,
) -> Image.Image:
    """Decode ``data`` into an RGB image following the module's conventions.

    ``draft_min_side``: a JPEG whose both sides are at least twice this is decoded at the
    largest 1/2, 1/4 or 1/8 scale that keeps both sides >= it (Pillow draft mode).
    """
    return _decoded(_opened(data, max_pixels, max_bytes, max_jpeg_scans, draft_min_side))


@contextmanager
def decoded_rgb(data: bytes, budget: DecodeBudget, **limits: int) -> Iterator[Image.Image]:
    """:func:`decode_rgb`'s picture (same ``limits``) for the time of a ``with`` block, which
    holds the picture's share of ``budget`` until the block ends and the picture is freed: what
    the block computes from it (the crop) is part of its cost."""
    image = _opened(data, **limits)
    with budget.held(decoded_bytes(*image.size)):
        picture = _decoded(image)
        try:
            yield picture
        finally:
            picture.close()
            image.close()


def _opened(
    data: bytes, max_pixels: int, max_bytes: int, max_jpeg_scans: int, draft_min_side: int = 0
) -> Image.Image:
    if not data:
        raise bad_request("EmptyBody", "the request body is empty: send an image")
    image = open_checked(data, max_pixels, max_bytes)
    if image.format in ("JPEG", "MPO"):
        _check_jpeg_scans(data, max_jpeg_scans)
        if draft_min_side:
            image.draft("RGB", (draft_min_side, draft_min_side))
    return image


def _decoded(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except Exception as err:  # Pillow raises many types on corrupt data
        raise _undecodable(f"the {image.format} data cannot be decoded", err) from None
    _apply_orientation(image)
    return to_rgb(image)


def open_checked(data: bytes, max_pixels: int, max_bytes: int) -> Image.Image:
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
    size_in_memory = decoded_bytes(width, height)
    if size_in_memory > max_bytes:
        raise BadInput(
            413,
            "ImageTooLarge",
            f"the image is {width}x{height}: decoded it takes {size_in_memory} bytes, over the "
            f"limit of {max_bytes} bytes",
        )
    return image


def jpeg_scan_count(data: bytes) -> int:
    """The scans (SOS markers) of the first picture in a JPEG, walked marker by marker so that
    an embedded thumbnail or an MPO's second picture is not counted. Stops at the first
    malformed marker: decoding will say what is wrong with the file."""
    scans, at = 0, 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return scans
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:  # EOI
            return scans
        if marker in _STANDALONE_MARKERS:
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next real marker
            scans += 1
            at = _end_of_entropy_coded_data(data, at)
    return scans


def _end_of_entropy_coded_data(data: bytes, at: int) -> int:
    """Where the next marker starts: in entropy-coded data 0xFF is followed only by a stuffed
    0x00 or a restart marker."""
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= len(data):
            return len(data)
        follower = data[at + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            at += 1 if follower == 0xFF else 2
            continue
        return at


def _check_jpeg_scans(data: bytes, max_scans: int) -> None:
    scans = jpeg_scan_count(data)
    if scans > max_scans:
        raise BadInput(
            413,
            "ImageTooComplex",
            f"the JPEG has {scans} scans, over the limit of {max_scans} (a progressive JPEG "
            "usually has about 10): each scan decodes the whole picture again",
        )


def upright_size(data: bytes) -> tuple[int, int]:
    """The picture's width and height as a viewer shows it (EXIF orientation applied), from
    the header alone: the frame an explanation's crop position refers to."""
    with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
        width, height = image.size
        with contextlib.suppress(Exception):  # a broken EXIF block: as decoding, no rotation
            if image.getexif().get(_ORIENTATION, 1) in _QUARTER_TURNS:
                return height, width
    return width, height


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


def _apply_orientation(image: Image.Image) -> None:
    """In place: an upright copy beside the decoded picture would double the peak memory."""
    # a broken EXIF block only loses the orientation, not the picture
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit RGB (see the module conventions)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bit(image)
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            composite = Image.alpha_composite(white, rgba)
            del white, rgba  # one full-size picture fewer while converting
            return composite.convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as err:
        raise BadInput(
            415, "UnsupportedImageMode", f"{image.mode} images cannot be converted to RGB: {err}"
        ) from None


def _sixteen_to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit grey (value // 257). A transparent grey value (PNG tRNS) is
    composited here, onto white, while it can still be told apart: after scaling, 256 other
    values would share it, and Pillow would keep only its low byte."""
    # 16-bit samples as they are (2 bytes each): widening to 32-bit first doubles the memory
    samples = np.asarray(image if image.mode.startswith("I;16") else image.convert("I"))
    grey = np.clip(samples // 257, 0, 255).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        grey[samples == transparent] = 255
    return Image.fromarray(grey)
