"""Fuzzing the decode path: whatever the bytes, the only exception is a 4xx ``BadInput``.

Seeds are the odd valid images of ``odd_images.py`` made small (64x43), then cut short at random
points, bit-flipped, or replaced by random bytes, and sent raw or wrapped the ways clients send
images (JSON base64, data: URI, form-urlencoded). Runs are derandomized: CI sees the same
examples every time.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from functools import cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_handler import decode_image
from resnet_mar.weights import STANDARD_IMAGENET
from resnet_serving.image_decoding import decode_rgb
from resnet_serving.inference_protocols import read_request
from resnet_serving.input_errors import BadInput
from resnet_serving.request_payload import extract_payload
from resnet_serving.serving_schema import HandlerSettings
from tests.odd_images import DECODE_LIMITS, VALID_NAMES, valid_images
from tests.photos import PHOTOS

# Pillow warns about the corrupt metadata it skips: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

#: Small enough that a header flipped into a large size is refused rather than decoded slowly.
MAX_PIXELS = 1_000_000
SEED_SIZE = (64, 43)
FORM = {"content-type": "application/x-www-form-urlencoded"}
HEADERS = [{}, FORM, {"content-type": "application/json"}, {"x-topk": "3"}]
#: How files begin, supported or not, to get random bytes past the format detection.
SIGNATURES = [
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xe1",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"P6\n",
    b"\x00\x00\x01\x00",
]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@cache
def seeds() -> dict[str, bytes]:
    """Every odd valid image, 64x43: JPEG (baseline, progressive, CMYK, EXIF, MPO), PNG (8- and
    16-bit, palette, alpha), GIF (static, animated), WebP (lossy, lossless), BMP, TIFF."""
    with Image.open(PHOTOS["chelsea"]) as photo:
        return {name: case.data for name, case in valid_images(photo, SEED_SIZE).items()}


def decodes_or_refuses(data: bytes, draft_min_side: int = 0) -> Image.Image | None:
    """The property: an RGB picture, or a BadInput with a 4xx status; nothing else."""
    try:
        image = decode_rgb(
            data, **{**DECODE_LIMITS, "max_pixels": MAX_PIXELS}, draft_min_side=draft_min_side
        )
    except BadInput as err:
        assert 400 <= err.status < 500, err.body()
        assert err.kind and err.message
        return None
    assert image.mode == "RGB"
    assert image.size[0] > 0 and image.size[1] > 0
    return image


def payload_decodes_or_refuses(request: dict, headers: dict[str, str]) -> None:
    try:
        payload = extract_payload(request, headers)
    except BadInput as err:
        assert 400 <= err.status < 500, err.body()
        assert err.kind and err.message
        return
    assert isinstance(payload.image, bytes)
    decodes_or_refuses(payload.image)


def test_seeds_decode() -> None:
    """The mutations start from images that decode."""
    assert set(seeds()) == set(VALID_NAMES)
    for name, data in seeds().items():
        assert decodes_or_refuses(data) is not None, name


seed_names = st.sampled_from(VALID_NAMES)
draft_sides = st.sampled_from([0, 0, 16, 32])


@fuzz_settings(1000)
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@fuzz_settings(1000)
@given(signature=st.sampled_from(SIGNATURES), tail=st.binary(max_size=1024))
def test_random_bytes_after_a_signature(signature: bytes, tail: bytes) -> None:
    decodes_or_refuses(signature + tail)


@fuzz_settings(1500)
@given(name=seed_names, data=st.data(), draft_min_side=draft_sides)
def test_truncated_images(name: str, data: st.DataObject, draft_min_side: int) -> None:
    image = seeds()[name]
    end = data.draw(st.integers(0, len(image) - 1), label="end")
    decodes_or_refuses(image[:end], draft_min_side)


@fuzz_settings(2000)
@given(name=seed_names, data=st.data(), draft_min_side=draft_sides)
def test_bit_flipped_images(name: str, data: st.DataObject, draft_min_side: int) -> None:
    image = bytearray(seeds()[name])
    # Headers are where parsers go wrong: half the flips land in the first 256 bytes.
    anywhere = st.integers(0, len(image) - 1)
    position = st.one_of(st.integers(0, min(255, len(image) - 1)), anywhere)
    flips = data.draw(
        st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=8), label="flips"
    )
    for index, bit in flips:
        image[index] ^= 1 << bit
    decodes_or_refuses(bytes(image), draft_min_side)


def with_valid_crcs(png: bytes) -> bytes:
    """``png`` with every chunk's CRC recomputed, so a flipped bit gets past the CRC check and
    into the parsing of the chunk (IHDR: size, bit depth, colour type; IDAT: the pixels)."""
    data = bytearray(png)
    position = 8
    while position + 12 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        end = position + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[position + 4 : end]))
        position = end + 4
    return bytes(data)


PNG_SEEDS = [name for name in VALID_NAMES if name.startswith("png_")]


@fuzz_settings(1000)
@given(name=st.sampled_from(PNG_SEEDS), data=st.data())
def test_bit_flipped_pngs_with_valid_crcs(name: str, data: st.DataObject) -> None:
    image = bytearray(seeds()[name])
    header = st.integers(8, 40)  # the signature is left alone, IHDR is not
    position = st.one_of(header, st.integers(8, len(image) - 1))
    flips = data.draw(
        st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=4), label="flips"
    )
    for index, bit in flips:
        image[index] ^= 1 << bit
    decodes_or_refuses(with_valid_crcs(bytes(image)))


def wrapped(image: bytes, how: str) -> tuple[dict, dict[str, str]]:
    """``image`` in a request the way a client may send it."""
    text = base64.b64encode(image).decode()
    if how == "raw":
        return {"body": image}, {}
    if how == "multipart":
        return {"file": bytearray(image), "topk": bytearray(b"2")}, {}
    if how == "json":
        return {"body": {"data": text, "topk": 2}}, {"content-type": "application/json"}
    if how == "data_uri":
        return {"body": {"image": "data:image/png;base64," + text}}, {}
    if how == "urlsafe":
        return {"body": base64.urlsafe_b64encode(image).rstrip(b"=")}, {}
    assert how == "form"
    name, _, value = text.partition("=")
    return {name.replace("+", " "): bytearray(value.encode())}, FORM


@fuzz_settings(1000)
@given(
    name=seed_names,
    how=st.sampled_from(["raw", "multipart", "json", "data_uri", "urlsafe", "form"]),
    data=st.data(),
)
def test_damaged_images_in_requests(name: str, how: str, data: st.DataObject) -> None:
    image = bytearray(seeds()[name])
    end = data.draw(st.integers(1, len(image)), label="end")
    flips = data.draw(st.lists(st.integers(0, end - 1), max_size=4), label="flips")
    for index in flips:
        image[index] ^= 0x40
    payload_decodes_or_refuses(*wrapped(bytes(image[:end]), how))


scalars = st.one_of(
    st.binary(max_size=64), st.text(max_size=64), st.integers(), st.none(), st.booleans()
)
base64_text = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n")
field_names = st.one_of(
    st.sampled_from(["body", "data", "image", "file", "topk", "upload"]), st.text(max_size=12)
)
values = st.one_of(
    scalars,
    base64_text,
    base64_text.map(str.encode).map(bytearray),
    st.lists(scalars, max_size=3),
    st.dictionaries(field_names, st.one_of(scalars, base64_text), max_size=3),
)


@fuzz_settings(1500)
@given(
    request=st.dictionaries(field_names, values, max_size=3),
    headers=st.sampled_from(HEADERS),
)
def test_random_requests(request: dict, headers: dict[str, str]) -> None:
    payload_decodes_or_refuses(request, headers)


@pytest.mark.parametrize("headers", HEADERS)
def test_non_latin_form_field(headers: dict[str, str]) -> None:
    """Form field names are URL-decoded text: any character may come out."""
    payload_decodes_or_refuses({"€uro ünïcode ☃": bytearray("ü=".encode())}, headers)


#: What decode_image needs of a model's settings: the standard ImageNet preprocessing.
CROP_SETTINGS = HandlerSettings(
    "resnet18", "torchscript", STANDARD_IMAGENET, {}, max_image_pixels=MAX_PIXELS
)
#: Formats with the largest side each can encode.
ENCODABLE = {"PNG": 2**20, "GIF": 65535, "TIFF": 2**20, "WEBP": 16383, "JPEG": 65500, "BMP": 2**20}


@fuzz_settings(300)
@given(
    fmt=st.sampled_from(sorted(ENCODABLE)),
    long_side=st.integers(1, 70_000),
    short_side=st.integers(1, 40),
    tall=st.booleans(),
)
def test_any_shape_of_every_format_becomes_the_crop_or_a_4xx(fmt, long_side, short_side, tall):
    """Width and height drawn from square to 70,000 x 1, in every format: the stage the
    server runs per image gives the 3 x 224 x 224 crop (work bounded by the crop, see
    resize_crop.py) or a 4xx; never another exception, never a blow-up."""
    assume(long_side <= ENCODABLE[fmt] and long_side * short_side <= MAX_PIXELS)
    size = (short_side, long_side) if tall else (long_side, short_side)
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 140, 220)).save(buffer, fmt)
    try:
        crop = decode_image(buffer.getvalue(), CROP_SETTINGS)
    except BadInput as err:
        assert 400 <= err.status < 500, err.body()
        return
    assert tuple(crop.shape) == (3, 224, 224)


#: Any value a client may put where a top-k goes: text (digits of every script, signs, long
#: runs), numbers, bytes, and JSON's other types.
OPTION_VALUES = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789³①٣+- .", max_size=8000),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


def option_requests(value: object) -> list[tuple[dict, dict[str, str]]]:
    """One image with ``value`` as its top-k in every envelope that carries one."""
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    v2 = {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    found = [
        ({"data": b"\x89PNG", "topk": value}, {}),
        ({"body": {"data": image, "topk": value}}, {"content-type": "application/json"}),
        ({"body": {"instances": [image], "topk": value}}, {}),
        ({"body": {**v2, "parameters": {"topk": value}}}, {}),
    ]
    if isinstance(value, str):
        found.append(({"body": b"\x89PNG"}, {"x-topk": value}))
    return found


@fuzz_settings(500)
@given(value=OPTION_VALUES)
def test_any_option_value_is_read_or_refused_with_a_4xx(value: object) -> None:
    """Whatever a client sends as top-k, in whatever envelope, reading the request gives a
    top-k within the classes or this request's own 4xx, nothing else (a stray exception there
    used to fail the whole batch with 503)."""
    for request, headers in option_requests(value):
        try:
            parsed = read_request(request, headers, default_topk=5, num_classes=1000, max_images=4)
        except BadInput as err:
            assert 400 <= err.status < 500 and len(err.message) < 300, err.body()
            continue
        assert 1 <= parsed.topk <= 1000
