"""Unit tests of the decode path: request payload -> image bytes -> one RGB picture.

The odd images come from ``odd_images.py``; their references are computed there without the
module under test.
"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from resnet_serving.image_decoding import (
    DecodeBudget,
    decode_rgb,
    decoded_bytes,
    decoded_rgb,
    jpeg_scan_count,
    upright_size,
)
from resnet_serving.input_errors import BadInput
from resnet_serving.request_payload import extract_payload
from tests.odd_images import (
    BROKEN_NAMES,
    DECODE_LIMITS,
    VALID_NAMES,
    BrokenCase,
    ValidCase,
    broken_inputs,
    encode,
    png_file,
    progressive_jpeg,
    sixteen_bit_png,
    valid_images,
)

#: The handler's default pixel limit, as the schema states it.
MAX_PIXELS = DECODE_LIMITS["max_pixels"]
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
        decode_rgb(data, **{**DECODE_LIMITS, **kwargs})
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
    image = decode_rgb(case.data, **DECODE_LIMITS)
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
    image = decode_rgb(case.data, **DECODE_LIMITS)
    assert image.size[0] > image.size[1]  # upright, like the cat photo
    assert image.size == case.source.size


def test_transparent_pixels_become_white(odd_valid: dict[str, ValidCase]) -> None:
    """The alpha ramp of these cases is fully transparent in the first column."""
    for name in ("png_rgba", "png_la", "webp_lossless_rgba", "tiff_rgba"):
        image = decode_rgb(odd_valid[name].data, **DECODE_LIMITS)
        assert (pixels(image)[:, 0] == 255).all(), name


def test_sixteen_bit_is_scaled_not_clipped(odd_valid: dict[str, ValidCase]) -> None:
    for name in ("png_16bit_gray", "png_16bit_rgb"):
        image = pixels(decode_rgb(odd_valid[name].data, **DECODE_LIMITS))
        assert (image < 250).mean() > 0.9 and image.std() > 20, name  # not all 255


def test_sixteen_bit_transparency_is_the_exact_value(odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid["png_16bit_gray_transparent"]
    with Image.open(io.BytesIO(case.data)) as image:
        samples = np.asarray(image)
        transparent = image.info["transparency"]
    decoded = pixels(decode_rgb(case.data, **DECODE_LIMITS))[..., 0]
    assert (decoded[samples == transparent] == 255).all()
    others = samples != transparent
    assert (decoded[others] == samples[others] // 257).all()


def test_animated_gif_uses_first_frame(odd_valid: dict[str, ValidCase]) -> None:
    case = odd_valid["gif_animated"]
    with Image.open(io.BytesIO(case.data)) as image:
        assert image.n_frames == 3
        image.seek(1)
        second = image.convert("RGB")
    decoded = decode_rgb(case.data, **DECODE_LIMITS)
    assert np.array_equal(pixels(decoded), pixels(case.reference))
    assert not np.array_equal(pixels(decoded), pixels(second))


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket", "grace_hopper"])
def test_real_photos_decode(name: str, photos: dict[str, Path], photo_bytes: dict[str, bytes]):
    image = decode_rgb(photo_bytes[name], **DECODE_LIMITS)
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
    decode_rgb(small_png, **DECODE_LIMITS)
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
    limits = {**DECODE_LIMITS, "max_pixels": width * height}
    assert decode_rgb(small_png, **limits).size == (width, height)


def test_a_thin_strip_is_refused_by_its_decoded_bytes() -> None:
    """Under the pixel limit, over the memory one: Pillow keeps a row pointer per row, so a
    one-pixel-wide picture costs three times its pixels."""
    height = DECODE_LIMITS["max_bytes"] // 12 + 1
    assert height < DECODE_LIMITS["max_pixels"]
    strip = png_file(1, height, 8, 0, zlib.compress(b"\x00\x80" * height, 9))
    start = time.perf_counter()
    error = refusal(strip)
    assert time.perf_counter() - start < 0.5
    assert (error.status, error.kind) == (413, "ImageTooLarge")
    assert f"1x{height}" in error.message and "bytes" in error.message
    assert f"{decoded_bytes(1, height)} bytes" in error.message


def test_jpeg_scans_are_counted_for_the_first_picture_only(photo_bytes) -> None:
    progressive = progressive_jpeg(64)
    assert jpeg_scan_count(encode(Image.new("RGB", (64, 64)), "JPEG")) == 1
    assert jpeg_scan_count(progressive) == progressive.count(b"\xff\xda") > 1
    assert jpeg_scan_count(progressive_jpeg(64, 7)) == jpeg_scan_count(progressive) + 7
    # a thumbnail inside an APP segment has scans of its own: they are not the picture's
    thumbnail = progressive_jpeg(16, 40)
    app2 = b"\xff\xe2" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    with_thumbnail = progressive[:2] + app2 + progressive[2:]
    assert jpeg_scan_count(with_thumbnail) == jpeg_scan_count(progressive)
    assert decode_rgb(with_thumbnail, **DECODE_LIMITS).size == (64, 64)


def test_a_jpeg_repeating_its_scans_is_refused_before_decoding(monkeypatch) -> None:
    bomb = progressive_jpeg(2000, 5000)
    assert len(bomb) < 200_000
    loads: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: loads.append(image))
    start = time.perf_counter()
    error = refusal(bomb)
    assert time.perf_counter() - start < 0.5
    assert not loads, "pixels were decoded before the scans were counted"
    assert (error.status, error.kind) == (413, "ImageTooComplex")
    assert f"{jpeg_scan_count(bomb)} scans" in error.message
    assert f"limit of {DECODE_LIMITS['max_jpeg_scans']}" in error.message


def test_a_progressive_jpeg_within_the_scan_limit_decodes() -> None:
    ordinary = progressive_jpeg(300)
    spare = DECODE_LIMITS["max_jpeg_scans"] - jpeg_scan_count(ordinary)
    assert decode_rgb(progressive_jpeg(300, spare), **DECODE_LIMITS).size == (300, 300)
    assert refusal(progressive_jpeg(300, spare + 1)).kind == "ImageTooComplex"


#: VmHWM, not ru_maxrss: the latter survives exec, so a child would report its parent's peak.
PEAK_SCRIPT = """
import re, sys
from resnet_serving.image_decoding import decode_rgb
sys.path.insert(0, ".")
from tests.odd_images import DECODE_LIMITS
def kilobytes(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
before = kilobytes("VmRSS")
decode_rgb(data, **DECODE_LIMITS)
print((kilobytes("VmHWM") - before) * 1024)
"""


@pytest.mark.parametrize(
    ("color_type", "sample", "transparent"),
    [(6, b"\x80" * 8, False), (0, b"\x80\x80", True)],
    ids=["rgba16", "grey16_transparent"],
)
def test_decoding_peaks_at_three_times_the_decoded_bytes(
    color_type: int, sample: bytes, transparent: bool, tmp_path: Path
) -> None:
    """The bound max_decoded_bytes documents: the worst modes (alpha to composite, 16-bit
    samples to scale) hold at most three RGB pictures at once; measured in a fresh process."""
    side = 3000
    image = tmp_path / "large.png"
    image.write_bytes(sixteen_bit_png(side, color_type, sample, transparent))
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(image)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout)
    share = decoded_bytes(side, side)
    assert share <= peak <= 3 * share + 16 * 2**20, (peak, share)


def test_the_decode_budget_holds_what_it_allows() -> None:
    """Three images of 60 in a budget of 100 decode one after another; two of 40 together."""
    budget = DecodeBudget(100)
    held, peak, lock = [0], [0], threading.Lock()

    def decode(amount: int) -> None:
        with budget.held(amount):
            with lock:
                held[0] += amount
                peak[0] = max(peak[0], held[0])
            time.sleep(0.05)
            with lock:
                held[0] -= amount

    for amounts, most in (([60, 60, 60], 60), ([40, 40], 80)):
        peak[0] = 0
        threads = [threading.Thread(target=decode, args=(amount,)) for amount in amounts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert peak[0] == most


# --- decode_rgb: JPEG draft mode ---------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg(cat: Image.Image) -> bytes:
    return encode(cat.resize((4000, 3000), Image.Resampling.BILINEAR), "JPEG", quality=90)


def test_draft_decodes_a_large_jpeg_smaller(large_jpeg: bytes) -> None:
    full = decode_rgb(large_jpeg, **DECODE_LIMITS)
    assert full.size == (4000, 3000)
    drafted = decode_rgb(large_jpeg, **DECODE_LIMITS, draft_min_side=512)
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
        assert decode_rgb(data, **DECODE_LIMITS, draft_min_side=512).size == size


def test_draft_only_touches_jpeg(cat: Image.Image) -> None:
    data = encode(cat.resize((1200, 1100)), "PNG")
    assert decode_rgb(data, **DECODE_LIMITS, draft_min_side=256).size == (1200, 1100)


def test_draft_then_exif_orientation(cat: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = cat.resize((2200, 1100)).transpose(Image.Transpose.ROTATE_90)  # 1100 x 2200
    data = encode(stored, "JPEG", quality=85, exif=exif)
    assert decode_rgb(data, **DECODE_LIMITS, draft_min_side=512).size == (1100, 550)


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
    image = decode_rgb(payload.image, **DECODE_LIMITS)
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
        image = decode_rgb(payload_image(request), **DECODE_LIMITS)
        assert np.abs(pixels(image) - pixels(case.reference)).max() <= case.tolerance


def test_a_decoded_picture_holds_its_share_of_the_budget_until_it_is_freed(small_png) -> None:
    budget = DecodeBudget(10**9)
    with decoded_rgb(small_png, budget, **DECODE_LIMITS) as picture:
        assert budget._used == decoded_bytes(*picture.size) > 0
        assert picture.mode == "RGB"
        np.asarray(picture)  # readable inside the block
    assert budget._used == 0
    with pytest.raises(ValueError):  # freed: Pillow refuses to read a closed picture
        picture.load()
        np.asarray(picture)
    with pytest.raises(BadInput), decoded_rgb(b"not an image", budget, **DECODE_LIMITS):
        pass
    assert budget._used == 0


@pytest.mark.parametrize("name", ["jpeg_exif_rotated", "png_rgb", "jpeg_mpo"])
def test_the_upright_size_is_the_decoded_size_read_from_the_header(name, odd_valid) -> None:
    data = odd_valid[name].data
    assert upright_size(data) == decode_rgb(data, **DECODE_LIMITS).size
