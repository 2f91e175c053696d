"""Odd but valid images, and broken inputs, made in memory from a real photo.

Each valid case carries the RGB picture a correct decoder must produce, computed here without
``resnet_serving.image_decoding`` (Pillow and numpy only), so the tests compare the decoder with an
independent reading of the conventions: EXIF orientation applied, transparency composited onto
white, 16-bit samples divided by 257 (rounded down), the first frame of an animation.

Lossy formats are compared with Pillow's own reading of the same encoded bytes (exact), and,
loosely, with the picture that was encoded (so a reference that is itself wrong shows up).

Each broken case carries the status and the ``BadInput.kind`` a correct decoder must answer with,
and a word its message must contain.

The cases are built by ``valid_images(photo)`` and ``broken_inputs(photo)``; the names are known
without building anything (``VALID_NAMES``, ``BROKEN_NAMES``) so tests can be parametrized on them.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

from resnet_serving.serving_schema import HandlerSettings

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(HandlerSettings)}
#: The handler's decoding bounds, as the schema states them (``decode_rgb``'s keywords).
DECODE_LIMITS = {
    "max_pixels": _DEFAULTS["max_image_pixels"],
    "max_bytes": _DEFAULTS["max_decoded_bytes"],
    "max_jpeg_scans": _DEFAULTS["max_jpeg_scans"],
}

#: Every photo is first shrunk to this size: small enough to be fast, not square (so a rotation
#: shows in the size), and with odd sides (JPEG and BMP row padding, partial MCUs).
PHOTO_SIZE = (151, 101)


class ValidCase(NamedTuple):
    data: bytes
    #: The RGB picture a correct decoder returns.
    reference: Image.Image
    #: Largest per-channel difference allowed from ``reference``.
    tolerance: int = 0
    #: For lossy formats: the picture that was encoded, and the mean absolute difference the
    #: decoded picture may have from it.
    source: Image.Image | None = None
    max_mean_error: float = 0.0


class BrokenCase(NamedTuple):
    data: bytes
    status: int
    kind: str
    #: A word (lower case) the error message must contain.
    says: str


def small_photo(photo: Image.Image, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    return photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pillow_rgb(data: bytes) -> Image.Image:
    """Plain Pillow's reading of ``data`` (first frame, no orientation, no alpha handling)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")


def alpha_ramp(size: tuple[int, int]) -> Image.Image:
    """An 'L' alpha going from fully transparent (left) to opaque (right), so every case has
    transparent, partly transparent and opaque pixels."""
    width, height = size
    ramp = np.linspace(0, 255, width).round().astype(np.uint8)
    return Image.fromarray(np.tile(ramp, (height, 1)), "L")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body))
    return struct.pack(">I", len(body)) + kind + body + crc


def png_file(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot write; ``idat``: the compressed rows."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def sixteen_bit_samples(photo: Image.Image) -> np.ndarray:
    """16-bit samples that use the low byte too (not just 8-bit values times 257): the high
    byte from the photo, the low byte from the photo upside down."""
    rgb = np.asarray(photo, dtype=np.uint32)
    return (rgb * 256 + rgb[::-1, ::-1]).astype(np.uint16)


def gray_reference(samples: np.ndarray) -> Image.Image:
    return Image.fromarray((samples // 257).astype(np.uint8), "L").convert("RGB")


# --- valid -------------------------------------------------------------------------------------

ValidBuilder = Callable[[Image.Image], ValidCase]
_VALID: dict[str, ValidBuilder] = {}


def _registrar(registry: dict[str, Callable]) -> Callable[[str], Callable[[Callable], Callable]]:
    """A decorator factory filing case builders under their names in ``registry``."""

    def named(name: str) -> Callable[[Callable], Callable]:
        def register(build: Callable) -> Callable:
            registry[name] = build
            return build

        return register

    return named


_valid = _registrar(_VALID)


def _lossy(data: bytes, source: Image.Image, max_mean_error: float) -> ValidCase:
    return ValidCase(data, pillow_rgb(data), 0, source, max_mean_error)


@_valid("jpeg_baseline")
def _jpeg_baseline(photo: Image.Image) -> ValidCase:
    return _lossy(encode(photo, "JPEG", quality=90), photo, 6)


@_valid("jpeg_progressive")
def _jpeg_progressive(photo: Image.Image) -> ValidCase:
    data = encode(photo, "JPEG", quality=90, progressive=True)
    return _lossy(data, photo, 6)


@_valid("jpeg_cmyk")
def _jpeg_cmyk(photo: Image.Image) -> ValidCase:
    # Pillow's RGB -> CMYK is K=0, C=255-R...: its CMYK -> RGB gives the photo back.
    return _lossy(encode(photo.convert("CMYK"), "JPEG", quality=90), photo, 8)


@_valid("jpeg_grayscale")
def _jpeg_grayscale(photo: Image.Image) -> ValidCase:
    gray = photo.convert("L")
    return _lossy(encode(gray, "JPEG", quality=90), gray.convert("RGB"), 6)


@_valid("jpeg_exif_rotated")
def _jpeg_exif_rotated(photo: Image.Image) -> ValidCase:
    """Pixels stored turned 90 degrees counter-clockwise; EXIF orientation 6 says 'turn it 90
    degrees clockwise to show it', which gives the upright photo back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif)
    upright = pillow_rgb(data).transpose(Image.Transpose.ROTATE_270)
    return ValidCase(data, upright, 0, photo, 6)


@_valid("jpeg_mpo")
def _jpeg_mpo(photo: Image.Image) -> ValidCase:
    """A phone's multi-picture JPEG: the first picture is the one shown."""
    second = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    data = encode(photo, "MPO", quality=90, save_all=True, append_images=[second])
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.n_frames) == ("MPO", 2)
    return _lossy(data, photo, 6)


@_valid("png_rgb")
def _png_rgb(photo: Image.Image) -> ValidCase:
    return ValidCase(encode(photo, "PNG"), photo)


@_valid("png_gray")
def _png_gray(photo: Image.Image) -> ValidCase:
    gray = photo.convert("L")
    return ValidCase(encode(gray, "PNG"), gray.convert("RGB"))


@_valid("png_16bit_gray")
def _png_16bit_gray(photo: Image.Image) -> ValidCase:
    samples = sixteen_bit_samples(photo)[..., 1]
    image = Image.fromarray(samples)  # mode I;16
    assert image.mode == "I;16"
    return ValidCase(encode(image, "PNG"), gray_reference(samples))


@_valid("png_16bit_gray_transparent")
def _png_16bit_gray_transparent(photo: Image.Image) -> ValidCase:
    """A 16-bit grey PNG whose tRNS makes one 16-bit value transparent: that value only, not
    the 256 other values that share its 8-bit scaled value."""
    samples = sixteen_bit_samples(photo)[..., 1]
    transparent = int(samples[samples.shape[0] // 2, samples.shape[1] // 2])
    same_8_bit = (samples // 257 == transparent // 257) & (samples != transparent)
    assert same_8_bit.any(), "pick a transparent value that shares its 8-bit value"
    data = encode(Image.fromarray(samples), "PNG", transparency=transparent)
    reference = np.where(samples == transparent, 255, samples // 257).astype(np.uint8)
    return ValidCase(data, Image.fromarray(reference).convert("RGB"))


@_valid("png_16bit_rgb")
def _png_16bit_rgb(photo: Image.Image) -> ValidCase:
    """Pillow cannot write 16-bit RGB, so this PNG is written by hand. Pillow reads 16-bit RGB
    PNGs into 8-bit RGB by keeping the high byte (value >> 8), which differs from value / 257 by
    at most 1: hence the tolerance of 1."""
    samples = sixteen_bit_samples(photo)
    height, width, _ = samples.shape
    rows = samples.astype(">u2").reshape(height, width * 3).view(np.uint8)  # big-endian
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    data = png_file(width, height, 16, 2, zlib.compress(raw, 9))
    reference = Image.fromarray((samples // 257).astype(np.uint8), "RGB")
    return ValidCase(data, reference, 1)


@_valid("png_palette")
def _png_palette(photo: Image.Image) -> ValidCase:
    palette = photo.quantize(64)
    return ValidCase(encode(palette, "PNG"), palette.convert("RGB"))


@_valid("png_palette_transparency")
def _png_palette_transparency(photo: Image.Image) -> ValidCase:
    """A palette image with a tRNS chunk: each palette entry has its own alpha."""
    palette = photo.quantize(64)
    entry_alpha = bytes((index * 37) % 256 for index in range(64))
    data = encode(palette, "PNG", transparency=entry_alpha)
    indices = np.asarray(palette)
    colors = np.asarray(palette.getpalette()[: 64 * 3], dtype=np.uint8).reshape(64, 3)
    alpha = np.frombuffer(entry_alpha, dtype=np.uint8)
    rgba = np.dstack([colors[indices], alpha[indices]])
    reference = on_white(Image.fromarray(rgba, "RGBA"))
    return ValidCase(data, reference)


@_valid("png_rgba")
def _png_rgba(photo: Image.Image) -> ValidCase:
    rgba = photo.copy()
    rgba.putalpha(alpha_ramp(photo.size))
    return ValidCase(encode(rgba, "PNG"), on_white(rgba))


@_valid("png_la")
def _png_la(photo: Image.Image) -> ValidCase:
    gray = photo.convert("L")
    la = Image.merge("LA", (gray, alpha_ramp(photo.size)))
    rgba = Image.merge("RGBA", (gray, gray, gray, alpha_ramp(photo.size)))
    return ValidCase(encode(la, "PNG"), on_white(rgba))


@_valid("png_1bit")
def _png_1bit(photo: Image.Image) -> ValidCase:
    bits = photo.convert("1")
    black_or_white = np.where(np.asarray(bits), 255, 0).astype(np.uint8)
    reference = Image.fromarray(black_or_white, "L").convert("RGB")
    return ValidCase(encode(bits, "PNG"), reference)


@_valid("webp_lossy")
def _webp_lossy(photo: Image.Image) -> ValidCase:
    return _lossy(encode(photo, "WEBP", quality=90), photo, 6)


@_valid("webp_lossless_rgba")
def _webp_lossless_rgba(photo: Image.Image) -> ValidCase:
    rgba = photo.copy()
    rgba.putalpha(alpha_ramp(photo.size))
    data = encode(rgba, "WEBP", lossless=True, exact=True)
    return ValidCase(data, on_white(rgba))


@_valid("gif_static")
def _gif_static(photo: Image.Image) -> ValidCase:
    palette = photo.quantize(255)
    return ValidCase(encode(palette, "GIF"), palette.convert("RGB"))


@_valid("gif_animated")
def _gif_animated(photo: Image.Image) -> ValidCase:
    """Three frames; the first is the photo, the others are not."""
    first = photo.quantize(255)
    others = [photo.transpose(Image.Transpose.ROTATE_180).quantize(255), first.point(lambda i: 0)]
    data = encode(first, "GIF", save_all=True, append_images=others, duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3, image.n_frames
    return ValidCase(data, first.convert("RGB"))


@_valid("gif_transparent")
def _gif_transparent(photo: Image.Image) -> ValidCase:
    """One palette entry (the most used one) is transparent."""
    palette = photo.quantize(255)
    indices = np.asarray(palette)
    transparent = int(np.bincount(indices.ravel()).argmax())
    data = encode(palette, "GIF", transparency=transparent)
    colors = np.asarray(palette.convert("RGB"))
    reference = np.where((indices == transparent)[..., None], 255, colors).astype(np.uint8)
    return ValidCase(data, Image.fromarray(reference))


@_valid("png_animated")
def _png_animated(photo: Image.Image) -> ValidCase:
    """An APNG: its default image, the first frame, is the photo."""
    other = photo.transpose(Image.Transpose.ROTATE_180)
    data = encode(photo, "PNG", save_all=True, append_images=[other], duration=100)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 2, image.n_frames
    return ValidCase(data, photo)


@_valid("webp_animated")
def _webp_animated(photo: Image.Image) -> ValidCase:
    other = photo.transpose(Image.Transpose.ROTATE_180)
    params = {"lossless": True, "save_all": True, "append_images": [other], "duration": 100}
    data = encode(photo, "WEBP", **params)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 2, image.n_frames
    return ValidCase(data, photo)


@_valid("bmp")
def _bmp(photo: Image.Image) -> ValidCase:
    return ValidCase(encode(photo, "BMP"), photo)


@_valid("tiff_deflate")
def _tiff_deflate(photo: Image.Image) -> ValidCase:
    return ValidCase(encode(photo, "TIFF", compression="tiff_deflate"), photo)


@_valid("tiff_rgba")
def _tiff_rgba(photo: Image.Image) -> ValidCase:
    rgba = photo.copy()
    rgba.putalpha(alpha_ramp(photo.size))
    return ValidCase(encode(rgba, "TIFF"), on_white(rgba))


@_valid("tiff_multipage")
def _tiff_multipage(photo: Image.Image) -> ValidCase:
    other = photo.transpose(Image.Transpose.ROTATE_180)
    data = encode(photo, "TIFF", save_all=True, append_images=[other])
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 2, image.n_frames
    return ValidCase(data, photo)


VALID_NAMES = tuple(_VALID)


def valid_images(photo: Image.Image, size: tuple[int, int] = PHOTO_SIZE) -> dict[str, ValidCase]:
    """Every valid case, made from ``photo`` (any size and mode) shrunk to ``size``."""
    small = small_photo(photo, size)
    return {name: build(small) for name, build in _VALID.items()}


# --- broken ------------------------------------------------------------------------------------

BrokenBuilder = Callable[[Image.Image], BrokenCase]
_BROKEN: dict[str, BrokenBuilder] = {}


_broken = _registrar(_BROKEN)


@_broken("empty")
def _empty(photo: Image.Image) -> BrokenCase:
    return BrokenCase(b"", 400, "EmptyBody", "empty")


@_broken("plain_text")
def _plain_text(photo: Image.Image) -> BrokenCase:
    text = b"Hello! This is a text file, not a picture of a cat.\n"
    return BrokenCase(text, 400, "NotAnImage", "not an image")


@_broken("random_bytes")
def _random_bytes(photo: Image.Image) -> BrokenCase:
    noise = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return BrokenCase(noise, 400, "NotAnImage", "not an image")


@_broken("truncated_jpeg")
def _truncated_jpeg(photo: Image.Image) -> BrokenCase:
    data = encode(photo, "JPEG", quality=90)
    return BrokenCase(data[: len(data) // 2], 400, "TruncatedImage", "truncated")


@_broken("truncated_jpeg_header")
def _truncated_jpeg_header(photo: Image.Image) -> BrokenCase:
    data = encode(photo, "JPEG", quality=90)
    return BrokenCase(data[:100], 400, "TruncatedImage", "truncated")


@_broken("truncated_png")
def _truncated_png(photo: Image.Image) -> BrokenCase:
    data = encode(photo, "PNG")
    return BrokenCase(data[: len(data) // 2], 400, "TruncatedImage", "truncated")


@_broken("truncated_png_header")
def _truncated_png_header(photo: Image.Image) -> BrokenCase:
    """The PNG signature and half of its IHDR chunk."""
    data = encode(photo, "PNG")
    return BrokenCase(data[:20], 400, "TruncatedImage", "png")


@_broken("corrupt_jpeg")
def _corrupt_jpeg(photo: Image.Image) -> BrokenCase:
    """A second start-of-image marker in the middle of the compressed data. (Random bytes there
    mostly decode, as a garbled picture: a JPEG decoder only warns about them.)"""
    data = bytearray(encode(photo, "JPEG", quality=90))
    middle = len(data) // 2
    data[middle : middle + 2] = b"\xff\xd8"
    try:
        pillow_rgb(bytes(data))
    except OSError:
        pass
    else:  # pragma: no cover - depends on libjpeg
        raise AssertionError("Pillow decodes the corrupt JPEG: pick another corruption")
    return BrokenCase(bytes(data), 400, "CorruptImage", "jpeg")


@_broken("png_bad_crc")
def _png_bad_crc(photo: Image.Image) -> BrokenCase:
    """A bit flipped in the first IDAT chunk: its CRC no longer matches."""
    data = bytearray(encode(photo, "PNG"))
    data[data.index(b"IDAT") + 40] ^= 0x10
    return BrokenCase(bytes(data), 400, "CorruptImage", "png")


@_broken("ppm")
def _ppm(photo: Image.Image) -> BrokenCase:
    return BrokenCase(encode(photo, "PPM"), 415, "UnsupportedImageFormat", "ppm")


@_broken("ico")
def _ico(photo: Image.Image) -> BrokenCase:
    return BrokenCase(encode(photo, "ICO"), 415, "UnsupportedImageFormat", "ico")


@_broken("tga")
def _tga(photo: Image.Image) -> BrokenCase:
    return BrokenCase(encode(photo, "TGA"), 415, "UnsupportedImageFormat", "tga")


#: The decompression bomb's declared size: 900 megapixels, over Pillow's own limit too.
BOMB_SIZE = (30_000, 30_000)
#: A bomb under Pillow's limit (89 megapixels) but over the handler's default (50 megapixels).
MEDIUM_BOMB_SIZE = (10_000, 8_000)


def black_png(width: int, height: int) -> bytes:
    """An all-black 1-bit PNG: a few bytes per million pixels once compressed."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000))
    body += compressor.compress(row * (height % 1000)) + compressor.flush()
    return png_file(width, height, 1, 0, body)


@_broken("bomb_png")
def _bomb_png(photo: Image.Image) -> BrokenCase:
    return BrokenCase(black_png(*BOMB_SIZE), 413, "ImageTooLarge", "pixels")


@_broken("medium_bomb_png")
def _medium_bomb_png(photo: Image.Image) -> BrokenCase:
    data = black_png(*MEDIUM_BOMB_SIZE)
    return BrokenCase(data, 413, "ImageTooLarge", "pixels")


@_broken("gif_header_garbage")
def _gif_header_garbage(photo: Image.Image) -> BrokenCase:
    """A GIF signature and a sane 64x48 screen descriptor, then noise."""
    noise = np.random.default_rng(5).integers(0, 256, 512, dtype=np.uint8).tobytes()
    data = b"GIF89a" + struct.pack("<HH", 64, 48) + noise
    return BrokenCase(data, 400, "CorruptImage", "gif")


BROKEN_NAMES = tuple(_BROKEN)


def broken_inputs(photo: Image.Image) -> dict[str, BrokenCase]:
    """Every broken case, made from ``photo`` (any size and mode)."""
    small = small_photo(photo)
    return {name: build(small) for name, build in _BROKEN.items()}


# --- what costs the decoder most: large but legal, and past its bounds -----------------------


def progressive_jpeg(side: int, repeated_scans: int = 0) -> bytes:
    """A progressive JPEG whose last scan is sent ``repeated_scans`` more times (libjpeg
    decodes every one of them over the whole picture)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan = data[data.rfind(b"\xff\xda") : -2]
    return data[:-2] + last_scan * repeated_scans + b"\xff\xd9"


def sixteen_bit_png(side: int, color_type: int, sample: bytes, transparent: bool) -> bytes:
    """A side x side PNG of 16-bit ``sample`` everywhere, compressed a row at a time (the raw
    rows of a large one would take hundreds of MB here)."""
    compressor, row = zlib.compressobj(), b"\x00" + sample * side
    rows = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, color_type, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header)
    if transparent:  # this very grey value is transparent: composited onto white
        chunks += png_chunk(b"tRNS", sample)
    chunks += png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks
