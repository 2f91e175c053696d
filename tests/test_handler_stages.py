"""Each handler stage without a server: decode -> preprocess -> one forward pass -> encode."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from handler_settings import HandlerSettings, environment_advice
from input_errors import BadInput
from PIL import Image
from resnet_handler import (
    ResNetClassifierHandler,
    crop_pixels,
    decode_request,
    encode_response,
    model_input,
    parse_topk,
)
from torchvision.models import ResNet50_Weights

from resnet_mar.weights import STANDARD_IMAGENET, Preprocessing
from tests.fake_context import FakeContext, unpacked_model_dir
from tests.reference import assert_same_answer, load_archive_reference, reference_answer


def settings_for(preprocessing: Preprocessing, **extra) -> HandlerSettings:
    return HandlerSettings.from_config({"preprocessing": preprocessing.as_dict(), **extra})


@pytest.mark.parametrize(
    "weights_transforms",
    [ResNet50_Weights.IMAGENET1K_V1.transforms(), ResNet50_Weights.IMAGENET1K_V2.transforms()],
    ids=["resize256", "resize232"],
)
def test_preprocessing_equals_the_weights_entry_transforms(photos, weights_transforms) -> None:
    """Bit for bit, image by image and as one batch, in both memory layouts."""
    settings = settings_for(Preprocessing.from_transforms(weights_transforms))
    pictures = [Image.open(path).convert("RGB") for path in photos.values()]
    expected = torch.stack([weights_transforms(picture) for picture in pictures])
    crops = [crop_pixels(picture, settings) for picture in pictures]
    for channels_last in (False, True):
        batch = model_input(crops, settings, channels_last=channels_last)
        assert batch.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        assert torch.equal(batch, expected)
    for crop, picture in zip(crops, pictures, strict=True):
        assert torch.equal(model_input([crop], settings)[0], weights_transforms(picture))


def test_decode_request_from_raw_multipart_base64_and_json(photo_bytes) -> None:
    settings = settings_for(STANDARD_IMAGENET)
    jpeg = photo_bytes["rocket"]
    expected = STANDARD_IMAGENET.to_transforms()(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    encoded = base64.b64encode(jpeg).decode()
    forms = [  # (request as TorchServe hands it over, lower-cased headers, expected top-k)
        ({"body": jpeg}, {}, 5),
        ({"data": bytearray(jpeg), "topk": b"3"}, {}, 3),
        ({"file": jpeg}, {}, 5),
        ({"body": encoded}, {"content-type": "text/plain"}, 5),
        ({"body": {"data": encoded, "topk": 2}}, {"content-type": "application/json"}, 2),
        ({"body": "data:image/jpeg;base64," + encoded}, {}, 5),
        ({"body": jpeg}, {"x-topk": "4"}, 4),
    ]
    for request, headers, expected_topk in forms:
        crop, topk = decode_request(request, headers, settings, num_classes=1000)
        assert torch.equal(model_input([crop], settings)[0], expected), (request.keys(), headers)
        assert topk == expected_topk, (request.keys(), headers)


def test_large_jpegs_are_decoded_exactly_by_default_and_cheaply_on_request(photos) -> None:
    big = io.BytesIO()
    Image.open(photos["chelsea"]).convert("RGB").resize((1600, 1200)).save(big, "JPEG", quality=90)
    request = {"body": big.getvalue()}
    reference = STANDARD_IMAGENET.to_transforms()(Image.open(big).convert("RGB"))
    settings = settings_for(STANDARD_IMAGENET)
    exact = model_input([decode_request(request, {}, settings, 1000)[0]], settings)[0]
    assert torch.equal(exact, reference)
    drafted_crop, _ = decode_request(
        request, {}, settings_for(STANDARD_IMAGENET, jpeg_draft_factor=2), 1000
    )
    drafted = model_input([drafted_crop], settings)[0]
    assert not torch.equal(drafted, reference)  # decoded from 800x600, not 1600x1200
    assert (drafted - reference).abs().mean() < 0.05


@pytest.mark.parametrize(
    ("raw", "expected"), [("3", 3), (b"7", 7), (5, 5), ("+2", 2), ("5000", 1000)]
)
def test_topk_is_validated_and_clamped(raw, expected: int) -> None:
    assert parse_topk(raw, num_classes=1000) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "2.5", "", True])
def test_bad_topk_is_a_400(raw) -> None:
    with pytest.raises(BadInput) as err:
        parse_topk(raw, num_classes=1000)
    assert err.value.status == 400 and err.value.kind == "InvalidOption"


def test_encode_response_is_the_stock_shape_best_first() -> None:
    labels = ["a", "crane", "b", "crane", "c"]
    probabilities = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    answer = encode_response(probabilities, 4, labels)
    # A repeated ImageNet name ("crane") keeps its best score and its rank.
    assert answer == {
        "crane": pytest.approx(0.4),
        "c": pytest.approx(0.15),
        "b": pytest.approx(0.1),
    }
    assert list(answer) == ["crane", "c", "b"]
    assert list(encode_response(probabilities, 1, labels)) == ["crane"]


@pytest.fixture(scope="module")
def handler_and_context(
    build_dir: Path, tmp_path_factory
) -> tuple[ResNetClassifierHandler, FakeContext]:
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path_factory.mktemp("resnet18"))
    context = FakeContext(model_dir, "resnet18.pt")
    handler = ResNetClassifierHandler()
    handler.initialize(context)
    return handler, context


def test_one_bad_request_does_not_fail_its_batch(
    handler_and_context, build_dir, photo_bytes
) -> None:
    handler, context = handler_and_context
    model = torch.jit.load(str(build_dir / "resnet18.pt")).eval()
    labels = json.loads((build_dir / "resnet18" / "index_to_name.json").read_text())
    batch = [
        {"body": photo_bytes["chelsea"]},
        {"body": b"this is not an image"},
        {"body": photo_bytes["rocket"]},
        {"body": b""},
        {"body": photo_bytes["grace_hopper"]},
    ]
    context.headers = [{}, {}, {"X-TopK": "2"}, {}, {}]
    context.statuses.clear()

    answers = handler.handle(batch, context)

    assert len(answers) == len(batch)
    assert set(context.statuses) == {1, 3}
    assert context.statuses[1][0] == 400 and answers[1]["type"] == "NotAnImage"
    assert context.statuses[3][0] == 400 and answers[3]["type"] == "EmptyBody"
    assert all(context.content_types[i] == "application/json" for i in range(len(batch)))
    for idx, name, topk in ((0, "chelsea", 5), (2, "rocket", 2), (4, "grace_hopper", 5)):
        assert_same_answer(answers[idx], reference_answer(model, labels, photo_bytes[name], topk))


def test_a_batch_of_only_bad_requests_never_runs_the_model(handler_and_context) -> None:
    handler, context = handler_and_context
    context.headers, context.statuses = [{}, {}], {}
    answers = handler.handle([{"body": b"x"}, {}], context)
    assert [a["code"] for a in answers] == [400, 400]
    assert json.dumps(answers)  # the worker can serialize every answer


def test_handler_refuses_a_label_map_that_does_not_fit_the_model(build_dir, tmp_path) -> None:
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path / "model")
    (model_dir / "index_to_name.json").write_text(json.dumps({"0": "only", "1": "two"}))
    with pytest.raises(ValueError, match=r"1000 outputs but index_to_name\.json has 2 labels"):
        ResNetClassifierHandler().initialize(FakeContext(model_dir, "resnet18.pt"))


def test_invalid_handler_config_fails_at_load(build_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="'handler' section is invalid"):
        HandlerSettings.from_config({"preprocessing": {"crop_size": 224}})
    with pytest.raises(ValueError, match="must be >= 1"):
        HandlerSettings.from_config({"preprocessing": STANDARD_IMAGENET.as_dict(), "topk": 0})


def test_environment_advice_names_what_the_server_lacks() -> None:
    expected = (("GOMP_SPINCOUNT", "3000"), ("OTHER", "1"))
    assert environment_advice(expected, {"GOMP_SPINCOUNT": "3000", "OTHER": "1"}) == ""
    advice = environment_advice(expected, {"GOMP_SPINCOUNT": "300000", "OTHER": "1"})
    assert "`GOMP_SPINCOUNT=3000 torchserve --start ...`" in advice
    assert "OTHER" not in advice
    assert "GOMP_SPINCOUNT=3000 OTHER=1" in environment_advice(expected, {})
    assert environment_advice((), {}) == ""


def test_handler_logs_the_worker_environment_it_lacks(
    build_dir, tmp_path, monkeypatch, caplog
) -> None:
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path / "model")
    context = FakeContext(model_dir, "resnet18.pt")
    wanted = context.model_yaml_config["handler"]["worker_environment"]
    for name in wanted:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level("WARNING", logger="resnet_handler"):
        ResNetClassifierHandler().initialize(context)
    lacking = " ".join(f"{name}={value}" for name, value in wanted.items())
    assert [r.message for r in caplog.records if lacking in r.message], caplog.text


def test_archive_reference_helper_reads_the_same_model(build_dir, photo_bytes) -> None:
    """Guards the test helper itself: a different model gives a different answer."""
    import zipfile

    mar = build_dir / "fake.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        archive.write(build_dir / "resnet18.pt", "resnet18.pt")
        archive.write(build_dir / "resnet18" / "index_to_name.json", "index_to_name.json")
    model, labels = load_archive_reference(mar, "resnet18.pt")
    other = torch.jit.load(str(build_dir / "resnet50.pt")).eval()
    ours = reference_answer(model, labels, photo_bytes["coffee"])
    theirs = reference_answer(other, labels, photo_bytes["coffee"])
    with pytest.raises(AssertionError):
        assert_same_answer(ours, theirs)
