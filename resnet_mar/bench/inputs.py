"""The photos the benchmark sends: real ones that ship inside installed packages (no download),
as JPEG bytes, and a large/small JPEG pair made from one of them."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from resnet_mar.photos import photo_paths

#: The build's sample photos (resnet_mar/photos.py), the ones the tests serve too.
PHOTOS = tuple(photo_paths().values())
JPEG_QUALITY = 90
#: Source of the large/small JPEG pair, both stretched to 4:3 as a phone photo is.
SIZE_TEST_PHOTO = photo_paths()["coffee"]
SMALL_JPEG_SIZE = (640, 480)
LARGE_JPEG_SIZE = (4000, 3000)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def photo_payloads() -> list[bytes]:
    """The request bodies: JPEG files as they are, PNGs re-encoded to JPEG in memory (clients
    send JPEG photos; a PNG would make decoding, not the model, the cost being measured)."""
    return [p.read_bytes() if p.suffix == ".jpg" else jpeg_bytes(Image.open(p)) for p in PHOTOS]


@dataclass(frozen=True)
class SizedJpeg:
    """One photo of the size test: its pixels as the report names them, and its bytes."""

    pixels: str
    data: bytes


def size_test_payloads() -> dict[str, SizedJpeg]:
    """The same photo as a 0.3-megapixel ("small") and a 12-megapixel ("large") JPEG."""
    photo = Image.open(SIZE_TEST_PHOTO).convert("RGB")
    return {
        which: SizedJpeg(
            f"{size[0]}x{size[1]}",
            jpeg_bytes(photo.resize(size, Image.Resampling.BICUBIC)),
        )
        for which, size in (("small", SMALL_JPEG_SIZE), ("large", LARGE_JPEG_SIZE))
    }
