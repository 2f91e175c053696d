"""Unit tests of the decode path: request payload -> image bytes -> one RGB picture.

The odd images come from ``odd_images.py``; their references are computed there without the
module under test.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from resnet_serving.image_decoding import decode_rgb
from resnet_serving.input_errors import BadInput
from resnet_serving.request_payload import extract_payload
from resnet_serving.serving_schema import HandlerSettings
from tests.odd_images import (
    BROKEN_NAMES,
    VALID_NAMES,
    BrokenCase,
    ValidCase,
    broken_inputs,
    encode,
    valid_images,
)

#: The handler's default pixel limit, as the schema states it.
MAX_PIXELS = next(
    f.default for f in dataclasses.fields(HandlerSettings) if f.name == "max_image_pixels"
)
FORM = {"content-type": "application/x-www-form-urlencoded"}
LOSSLESS = {
    name
    for name in VALID_NAMES
    if name.startswith(("png_", "bmp", "tiff_", "gif_", "webp_lossless", "webp_animated"))
}


@pytest.fixture(scope="session")
def cat(photos: dict[str, Path]) -> Image.Image:
    with Image.open(photos["chelsea"]) as photo:
        return photo.convert("RGB")


@pytest.fixture(scope="session")
def odd_valid(cat: Image.Image) -> dict[str, ValidCase]:
    return valid_images(cat)


@pytest.fixture(scope="session")
def odd_broken(cat: Image.Image) -> dict[str, BrokenCase]:
    return broken_inputs(cat)


@pytest.fixture(scope="session")
def small_png(odd_valid: dict[str, ValidCase]) -> bytes:
    return odd_valid["png_rgb"].data


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def refusal(data: bytes, **kwargs: int) -> BadInput:
    with pytest.raises(BadInput) as caught:
        decode_rgb(data, max_pixels=kwargs.pop("max_pixels", MAX_PIXELS), **kwargs)
    return caught.value


# --- decode_rgb: valid images ------------------------------------------------------------------


def test_lossless_and_lossy_cases_are_told_apart() -> None:
    """Lossless cases must be exact (16-bit RGB excepted, see odd_images); lossy ones are
    compared with Pillow's reading of their bytes and, loosely, with what they encoded."""
    assert {"png_16bit_rgb"} < LOSSLESS
    assert {"jpeg_baseline", "webp_lossy"}.isdisjoint(LOSSLESS)


@pytest.mark.parametrize("name", VALID_NAMES)
def test_odd_valid_image_decodes_like_reference(name: str, odd_valid: dict[str, ValidCase]):
    case = odd_valid[name]
    image = decode_rgb(case.data, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.size == case.reference.size
    difference = np.abs(pixels(image) - pixels(case.reference))
    assert difference.max() <= case.tolerance, f"{name}: off by up to {difference.max()}"
    if name in LOSSLESS:
        assert case.source is None
        assert case.tolerance == (1 if name == "png_16bit_rgb" else 0)
    else:
        assert case.source is not None, f"{name}: a lossy case needs the picture it encoded"
    if case.source is not None:  # the reference itself is the picture that was encoded
        assert image.size == case.source.size
        mean_error = np.abs(pixels(image) - pixels(case.source.convert("RGB"))).mean()
        assert mean_error <= case.max_mean_error, f"{name}: mean error {mean_error:.1f}"


def test_exif_orientation_is_applied(odd_valid: dict[str, ValidCase], cat: Image.Image) -> None:
    case = odd_valid["jpeg_exif_rotated"]
    with Image.open(io.BytesIO(case.data)) as stored:
        assert stored.getexif()[0x0112] == 6
        assert stored.size == case.reference.size[::-1]  # stored on its side
    image = decode_rgb(case.data, max_pixels=MAX_PIXELS)
    assert image.size[0] > image.size[1]  # upright, like the cat photo
    assert image.size == case.source.size


def test_transparent_pixels_become_white(odd_valid: dict[str, ValidCase]) -> None:
    """The alpha ramp of these cases is fully transparent in the first column."""
    for name in ("png_rgba", "png_la", "webp_lossless_rgba", "tiff_rgba"):
        image = decode_rgb(odd_valid[name].data, max_pixels=MAX_PIXELS)
        assert (pixels(image)[:, 0] == 255).all(), name


def test_sixteen_bit_is_scaled_not_clipped(odd_valid: dict[str, ValidCase]) -> None:
    for name in ("png_16bit_gray", "png_16bit_rgb"):
        image = pixels(decode_rgb(odd_valid[name].data, max_pixels=MAX_PIXELS))
        assert (image < 250).mean() > 0.9 and image.std() > 20, name  # not all 255


def test_sixteen_bit_transparency_is_the_exact_value(odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid["png_16bit_gray_transparent"]
    with Image.open(io.BytesIO(case.data)) as image:
        samples = np.asarray(image)
        transparent = image.info["transparency"]
    decoded = pixels(decode_rgb(case.data, max_pixels=MAX_PIXELS))[..., 0]
    assert (decoded[samples == transparent] == 255).all()
    others = samples != transparent
    assert (decoded[others] == samples[others] // 257).all()


def test_animated_gif_uses_first_frame(odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid["gif_animated"]
    with Image.open(io.BytesIO(case.data)) as image:
        assert image.n_frames == 3
        image.seek(1)
        second = image.convert("RGB")
    decoded = decode_rgb(case.data, max_pixels=MAX_PIXELS)
    assert np.array_equal(pixels(decoded), pixels(case.reference))
    assert not np.array_equal(pixels(decoded), pixels(second))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket", "grace_hopper"])
def test_real_photos_decode(name: str, photos: dict[str, Path], photo_bytes: dict[str, bytes]):
    image = decode_rgb(photo_bytes[name], max_pixels=MAX_PIXELS)
    with Image.open(photos[name]) as original:
        assert image.size == original.size
    assert image.mode == "RGB"


# --- decode_rgb: broken inputs -----------------------------------------------------------------


@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_broken_input_is_refused(name: str, odd_broken: dict[str, BrokenCase]) -> None:
    case = odd_broken[name]
    error = refusal(case.data)
    assert 400 <= error.status < 500
    assert (error.status, error.kind) == (case.status, case.kind), error.message
    assert case.says in error.message.lower(), error.message
    assert error.body() == {"code": case.status, "type": case.kind, "message": error.message}


def test_broken_inputs_are_not_decodable_by_pillow(odd_broken: dict[str, BrokenCase]) -> None:
    """Guards the broken set itself: what plain Pillow decodes is an image, not a broken one
    (the unsupported formats excepted: Pillow reads them, the handler does not)."""
    for case in odd_broken.values():
        if case.status != 400:
            continue
        with pytest.raises(Exception):  # noqa: B017 - any Pillow error will do
            Image.open(io.BytesIO(case.data)).load()


@pytest.mark.parametrize("name", ["bomb_png", "medium_bomb_png"])
def test_bomb_is_refused_from_its_header(
    name: str, odd_broken: dict[str, BrokenCase], small_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = odd_broken[name].data
    assert len(data) < 200_000  # a small file...
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width * height > MAX_PIXELS  # ...declaring a huge picture

    loads: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def watched_load(self: ImageFile.ImageFile) -> object:
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched_load)
    decode_rgb(small_png, max_pixels=MAX_PIXELS)
    assert loads, "the watch sees pixel decoding"
    loads.clear()
    start = time.perf_counter()
    error = refusal(data)
    assert time.perf_counter() - start < 0.5
    assert not loads, "pixels were decoded before the size check"
    assert (error.status, error.kind) == (413, "ImageTooLarge")


def test_max_pixels_is_checked_from_the_header(small_png: bytes) -> None:
    width, height = Image.open(io.BytesIO(small_png)).size
    error = refusal(small_png, max_pixels=width * height - 1)
    assert (error.status, error.kind) == (413, "ImageTooLarge")
    assert f"{width}x{height}" in error.message
    assert decode_rgb(small_png, max_pixels=width * height).size == (width, height)


# --- decode_rgb: JPEG draft mode ---------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg(cat: Image.Image) -> bytes:
    return encode(cat.resize((4000, 3000), Image.Resampling.BILINEAR), "JPEG", quality=90)


def test_draft_decodes_a_large_jpeg_smaller(large_jpeg: bytes) -> None:
    full = decode_rgb(large_jpeg, max_pixels=MAX_PIXELS)
    assert full.size == (4000, 3000)
    drafted = decode_rgb(large_jpeg, max_pixels=MAX_PIXELS, draft_min_side=512)
    assert drafted.mode == "RGB"
    assert drafted.size[0] < 4000 and drafted.size[1] < 3000
    assert min(drafted.size) >= 512
    assert drafted.size == (1000, 750)  # the largest 1/2^n scale keeping both sides >= 512
    # same picture, fewer pixels
    shrunk = full.resize(drafted.size, Image.Resampling.BOX)
    assert np.abs(pixels(drafted) - pixels(shrunk)).mean() < 4


def test_draft_keeps_a_small_jpeg_whole(cat: Image.Image) -> None:
    for size in [(1000, 1000), (2000, 1000), cat.size]:  # a side under 2 x 512: no reduction
        data = encode(cat.resize(size), "JPEG", quality=90)
        assert decode_rgb(data, max_pixels=MAX_PIXELS, draft_min_side=512).size == size


def test_draft_only_touches_jpeg(cat: Image.Image) -> None:
    data = encode(cat.resize((1200, 1100)), "PNG")
    assert decode_rgb(data, max_pixels=MAX_PIXELS, draft_min_side=256).size == (1200, 1100)


def test_draft_then_exif_orientation(cat: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = cat.resize((2200, 1100)).transpose(Image.Transpose.ROTATE_90)  # 1100 x 2200
    data = encode(stored, "JPEG", quality=85, exif=exif)
    assert decode_rgb(data, max_pixels=MAX_PIXELS, draft_min_side=512).size == (1100, 550)


# --- extract_payload ---------------------------------------------------------------------------


def payload_image(request: dict, headers: dict | None = None) -> bytes:
    return extract_payload(request, headers or {}).image


def payload_refusal(request: dict, headers: dict | None = None) -> BadInput:
    with pytest.raises(BadInput) as caught:
        extract_payload(request, headers or {})
    assert 400 <= caught.value.status < 500
    assert caught.value.message
    return caught.value


def test_raw_body(small_png: bytes) -> None:
    assert payload_image({"body": small_png}) == small_png
    assert payload_image({"body": bytearray(small_png)}) == small_png


@pytest.mark.parametrize("field", ["data", "image", "file", "upload", "photo.jpg"])
def test_multipart_field(field: str, small_png: bytes) -> None:
    request = {field: bytearray(small_png), "topk": bytearray(b"3")}
    payload = extract_payload(request, {})
    assert payload.image == small_png
    assert payload.options == {"topk": bytearray(b"3")}


def test_topk_header(small_png: bytes) -> None:
    payload = extract_payload({"body": small_png}, {"x-topk": "2"})
    assert payload.options == {"topk": "2"}


@pytest.mark.parametrize("field", ["data", "image"])
def test_json_with_base64(field: str, small_png: bytes) -> None:
    text = base64.b64encode(small_png).decode()
    payload = extract_payload({"body": {field: text, "topk": 3}}, {})
    assert payload.image == small_png
    assert payload.options == {"topk": 3}


def test_base64_text_body(small_png: bytes) -> None:
    text = base64.b64encode(small_png)
    assert payload_image({"body": text}) == small_png
    assert payload_image({"body": bytearray(text)}) == small_png
    assert payload_image({"data": text.decode()}) == small_png


def test_data_uri(small_png: bytes) -> None:
    uri = "data:image/png;base64," + base64.b64encode(small_png).decode()
    assert payload_image({"body": {"image": uri}}) == small_png
    assert payload_image({"body": uri.encode()}) == small_png


def test_urlsafe_base64(small_png: bytes) -> None:
    text = base64.urlsafe_b64encode(small_png)
    assert b"-" in text or b"_" in text
    assert payload_image({"body": text}) == small_png
    assert payload_image({"body": text.rstrip(b"=")}) == small_png  # padding is optional


def test_base64_with_newlines(small_png: bytes) -> None:
    text = base64.encodebytes(small_png)  # 76-character lines, like the base64 tool
    assert text.count(b"\n") > 10
    assert payload_image({"body": text}) == small_png
    assert payload_image({"body": text.replace(b"\n", b"\r\n")}) == small_png


@pytest.mark.parametrize(
    "value",
    [
        "this is not base64!",
        "QUJD*RUZH",
        "A" * 9,  # impossible length
        "data:image/png,iVBORw0KGgo=",  # a data: URI that is not base64
        "data:image/png;base64,@@@@",
    ],
)
def test_malformed_base64(value: str) -> None:
    error = payload_refusal({"body": {"data": value}})
    assert (error.status, error.kind) == (400, "MalformedBase64")
    assert "base64" in error.message


def test_base64_of_non_image_is_refused_by_the_decoder() -> None:
    data = payload_image({"body": base64.b64encode(b"just some text, long enough")})
    assert refusal(data).kind == "NotAnImage"


@pytest.mark.parametrize("body", [{"picture": "iVBORw0KGgo="}, {}, {"topk": 3}])
def test_json_without_image_field(body: dict) -> None:
    error = payload_refusal({"body": body})
    assert (error.status, error.kind) == (400, "MalformedJSON")
    assert "data" in error.message and "image" in error.message


@pytest.mark.parametrize("value", [42, None, ["iVBORw0KGgo="], {"data": "x"}])
def test_json_image_of_wrong_type(value: object) -> None:
    error = payload_refusal({"body": {"data": value}})
    assert (error.status, error.kind) == (400, "MalformedJSON")


def test_ambiguous_multipart(small_png: bytes) -> None:
    error = payload_refusal({"first": bytearray(small_png), "second": bytearray(small_png)})
    assert (error.status, error.kind) == (400, "MalformedMultipart")
    assert "first" in error.message and "second" in error.message


def test_no_field_at_all() -> None:
    error = payload_refusal({"topk": b"3"})
    assert (error.status, error.kind) == (400, "EmptyBody")


def torchserve_form(text: str) -> dict[str, bytearray]:
    """What TorchServe hands over for a form-urlencoded body: split at its first '=', the name
    URL-decoded ('+' read as a space), the value as bytes."""
    name, _, value = text.partition("=")
    return {name.replace("+", " "): bytearray(value.encode("latin-1"))}


@pytest.mark.parametrize("extra", [0, 1, 2])  # base64 padding "", "==", "="
def test_form_urlencoded_base64_is_rebuilt(extra: int, small_png: bytes) -> None:
    data = small_png + b"\x00" * extra
    text = base64.b64encode(data).decode()
    assert "+" in text
    assert text.endswith("=" * ((3 - len(data) % 3) % 3))
    assert payload_image(torchserve_form(text), FORM) == data
    # as the base64 tool writes it, and as a data: URI
    lines = base64.encodebytes(data).decode()
    assert payload_image(torchserve_form(lines), FORM) == data
    uri = "data:image/png;base64," + text
    assert payload_image(torchserve_form(uri), FORM) == data


def test_form_urlencoded_base64_decodes(odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid["jpeg_baseline"]
    headers = {**FORM, "x-topk": "1"}
    payload = extract_payload(torchserve_form(base64.b64encode(case.data).decode()), headers)
    assert payload.options == {"topk": "1"}
    image = decode_rgb(payload.image, max_pixels=MAX_PIXELS)
    assert np.array_equal(pixels(image), pixels(case.reference))


def test_form_urlencoded_binary_is_unsupported(odd_valid: dict[str, ValidCase]) -> None:
    """A binary image sent as a form (curl --data-binary without a Content-Type) is mangled by
    the form parsing beyond repair."""
    jpeg = odd_valid["jpeg_baseline"].data.decode("latin-1")
    for request in [
        torchserve_form(jpeg),
        {"a": bytearray(b"1"), "b": bytearray(b"2")},
        {},
        torchserve_form("short"),
    ]:
        error = payload_refusal(request, FORM)
        assert (error.status, error.kind) == (415, "UnsupportedMediaType")
        assert "Content-Type" in error.message


@pytest.mark.parametrize("name", ["png_rgba", "jpeg_exif_rotated", "gif_animated", "tiff_rgba"])
def test_payload_then_decode(name: str, odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid[name]
    text = base64.b64encode(case.data).decode()
    for request in [{"body": case.data}, {"file": bytearray(case.data)}, {"body": {"data": text}}]:
        image = decode_rgb(payload_image(request), max_pixels=MAX_PIXELS)
        assert np.abs(pixels(image) - pixels(case.reference)).max() <= case.tolerance
