"""Each handler stage without a server: decode -> preprocess -> one forward pass -> encode."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image
from torchvision.models import ResNet50_Weights

from resnet_handler import ResNetClassifierHandler, decode_image, environment_advice, model_input
from resnet_mar.weights import STANDARD_IMAGENET, preprocessing_of, reference_transforms
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from resnet_serving.inference_protocols import label_scores, read_request
from resnet_serving.input_errors import BadInput
from resnet_serving.request_options import parse_topk
from resnet_serving.serving_schema import HandlerSettings, Preprocessing
from tests.fake_context import FakeContext, unpacked_model_dir
from tests.reference import assert_same_answer, load_archive_reference, reference_answer


def settings_for(preprocessing: Preprocessing, **extra) -> HandlerSettings:
    return HandlerSettings(
        architecture="resnet18",
        model_format="torchscript",
        preprocessing=preprocessing,
        worker_environment=dict(WORKER_ENVIRONMENT),
        **extra,
    )


def crop_of(request: dict, headers: dict, settings: HandlerSettings) -> tuple[torch.Tensor, int]:
    """What the handler makes of a one-image request: the crop and the top-k."""
    parsed = read_request(
        request, headers, default_topk=settings.topk, num_classes=1000, max_images=1
    )
    (image,) = parsed.images
    return decode_image(image, settings), parsed.topk


@pytest.mark.parametrize(
    "weights_transforms",
    [ResNet50_Weights.IMAGENET1K_V1.transforms(), ResNet50_Weights.IMAGENET1K_V2.transforms()],
    ids=["resize256", "resize232"],
)
def test_preprocessing_equals_the_weights_entry_transforms(photos, weights_transforms) -> None:
    """Bit for bit, image by image and as one batch, in both memory layouts."""
    settings = settings_for(preprocessing_of(weights_transforms))
    pictures = [Image.open(path).convert("RGB") for path in photos.values()]
    expected = torch.stack([weights_transforms(picture) for picture in pictures])
    crops = [decode_image(path.read_bytes(), settings) for path in photos.values()]
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
    expected = reference_transforms(STANDARD_IMAGENET)(Image.open(io.BytesIO(jpeg)).convert("RGB"))
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
        crop, topk = crop_of(request, headers, settings)
        assert torch.equal(model_input([crop], settings)[0], expected), (request.keys(), headers)
        assert topk == expected_topk, (request.keys(), headers)


def test_large_jpegs_are_decoded_exactly_by_default_and_cheaply_on_request(photos) -> None:
    big = io.BytesIO()
    Image.open(photos["chelsea"]).convert("RGB").resize((1600, 1200)).save(big, "JPEG", quality=90)
    request = {"body": big.getvalue()}
    reference = reference_transforms(STANDARD_IMAGENET)(Image.open(big).convert("RGB"))
    settings = settings_for(STANDARD_IMAGENET)
    exact = model_input([crop_of(request, {}, settings)[0]], settings)[0]
    assert torch.equal(exact, reference)
    drafted_crop, _ = crop_of(request, {}, settings_for(STANDARD_IMAGENET, jpeg_draft_factor=2))
    drafted = model_input([drafted_crop], settings)[0]
    assert not torch.equal(drafted, reference)  # decoded from 800x600, not 1600x1200
    assert (drafted - reference).abs().mean() < 0.05


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("3", 3), (b"7", 7), (5, 5), ("+2", 2), ("5000", 1000), (" 4 ", 4), ("999999", 1000)],
)
def test_topk_is_validated_and_clamped(raw, expected: int) -> None:
    assert parse_topk(raw, num_classes=1000) == expected


@pytest.mark.parametrize(
    "raw",
    ["0", "-1", "abc", "2.5", "", True, 2.0, None, [3], "³", "①", "٣", "1" * 5000, "1234567",
     b"\xff", "0x10", "1_000"],
)  # fmt: skip
def test_bad_topk_is_a_400_with_a_short_message(raw) -> None:
    """Only ASCII digits: "³" and "①" pass str.isdigit and then fail int(); 5,000 digits fail
    int() too. Each must be this request's 400, with the value cut short in the message."""
    with pytest.raises(BadInput) as err:
        parse_topk(raw, num_classes=1000)
    assert err.value.status == 400 and err.value.kind == "InvalidOption"
    assert len(err.value.message) < 200


def test_label_scores_are_the_stock_shape_best_first() -> None:
    labels = ["a", "crane", "b", "crane", "c"]
    probabilities = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    answer = label_scores(probabilities, 4, labels)
    # A repeated ImageNet name ("crane") keeps its best score and its rank.
    assert answer == {
        "crane": pytest.approx(0.4),
        "c": pytest.approx(0.15),
        "b": pytest.approx(0.1),
    }
    assert list(answer) == ["crane", "c", "b"]
    assert list(label_scores(probabilities, 1, labels)) == ["crane"]


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


def test_a_batch_of_only_bad_requests_never_runs_the_model(
    handler_and_context, monkeypatch
) -> None:
    handler, context = handler_and_context
    calls, original = [], handler.model
    monkeypatch.setattr(handler, "model", lambda batch: calls.append(batch) or original(batch))
    context.headers, context.statuses = [{}, {}], {}
    answers = handler.handle([{"body": b"x"}, {}], context)
    assert [a["code"] for a in answers] == [400, 400]
    assert json.dumps(answers)  # the worker can serialize every answer
    assert calls == []


def test_poisoned_options_fail_only_their_own_request(
    handler_and_context, build_dir, photo_bytes
) -> None:
    """A top-k of 5,000 digits or of "³" used to raise outside the request's own error path and
    fail its whole batch (503 for every request in it)."""
    handler, context = handler_and_context
    model = torch.jit.load(str(build_dir / "resnet18.pt")).eval()
    labels = json.loads((build_dir / "resnet18" / "index_to_name.json").read_text())
    photo = photo_bytes["rocket"]
    batch = [{"body": photo}, {"body": photo}, {"data": photo, "topk": "①"}, {"body": photo}]
    batch += [{"body": {"data": base64.b64encode(photo).decode(), "topk": "³"}}]
    context.headers = [{}, {"X-TopK": "9" * 5000}, {}, {"X-TopK": "2"}, {}]
    context.statuses = {}
    answers = handler.handle(batch, context)
    assert sorted(context.statuses) == [1, 2, 4]
    assert {answers[i]["type"] for i in (1, 2, 4)} == {"InvalidOption"}
    assert_same_answer(answers[0], reference_answer(model, labels, photo))
    assert_same_answer(answers[3], reference_answer(model, labels, photo, topk=2))


@pytest.mark.parametrize("stage", ["_read", "decode_images", "encode_answer"])
def test_an_unexpected_error_in_one_request_is_its_own_400(
    handler_and_context, photo_bytes, monkeypatch, stage
) -> None:
    """Whatever raises while one request is read, decoded or answered stays that request's:
    a bug is injected into each stage in turn, reached by the first request's data only."""
    import resnet_handler

    handler, context = handler_and_context
    poisoned = photo_bytes["chelsea"]
    if stage == "_read":
        real_read = handler._read

        def read(request, headers):
            if request.get("body") == poisoned:
                raise RuntimeError("a bug reached by this request's data")
            return real_read(request, headers)

        monkeypatch.setattr(handler, "_read", read)
    elif stage == "decode_images":
        real_decode = resnet_handler.decode_image

        def decode(data, settings, budget=None):
            if data == poisoned:
                raise RuntimeError("a bug reached by this request's data")
            return real_decode(data, settings, budget)

        monkeypatch.setattr(resnet_handler, "decode_image", decode)
    else:
        real_encode = resnet_handler.encode_answer

        def encode(request, rows, labels, identity):
            if request.topk == 3:  # the poisoned request asks for 3
                raise RuntimeError("a bug reached by this request's data")
            return real_encode(request, rows, labels, identity)

        monkeypatch.setattr(resnet_handler, "encode_answer", encode)
    context.headers, context.statuses = [{"X-TopK": "3"}, {}], {}
    answers = handler.handle([{"body": poisoned}, {"body": photo_bytes["coffee"]}], context)
    assert context.statuses == {0: (400, "InvalidRequest")}
    assert "RuntimeError" in answers[0]["message"]
    assert len(answers[1]) == 5


def test_handler_refuses_a_label_map_that_does_not_fit_the_model(build_dir, tmp_path) -> None:
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path / "model")
    (model_dir / "index_to_name.json").write_text(json.dumps({"0": "only", "1": "two"}))
    with pytest.raises(ValueError, match=r"1000 outputs but index_to_name\.json has 2 labels"):
        ResNetClassifierHandler().initialize(FakeContext(model_dir, "resnet18.pt"))


def test_environment_advice_names_what_the_server_lacks() -> None:
    expected = {"GOMP_SPINCOUNT": "3000", "OTHER": "1"}
    assert environment_advice(expected, {"GOMP_SPINCOUNT": "3000", "OTHER": "1"}) == ""
    advice = environment_advice(expected, {"GOMP_SPINCOUNT": "300000", "OTHER": "1"})
    assert "`GOMP_SPINCOUNT=3000 torchserve --start ...`" in advice
    assert "OTHER" not in advice
    assert "GOMP_SPINCOUNT=3000 OTHER=1" in environment_advice(expected, {})
    assert environment_advice({}, {}) == ""


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
    """Guards the test helper itself: the model it reads back from an archive answers exactly
    as the file packed into it, and a different model does not."""
    import zipfile

    mar = build_dir / "fake.mar"
    with zipfile.ZipFile(mar, "w") as archive:
        archive.write(build_dir / "resnet18.pt", "resnet18.pt")
        archive.write(build_dir / "resnet18" / "index_to_name.json", "index_to_name.json")
    model, labels = load_archive_reference(mar, "resnet18.pt")
    packed = torch.jit.load(str(build_dir / "resnet18.pt")).eval()
    other = torch.jit.load(str(build_dir / "resnet50.pt")).eval()
    ours = reference_answer(model, labels, photo_bytes["coffee"])
    assert ours == reference_answer(packed, labels, photo_bytes["coffee"])
    with pytest.raises(AssertionError):
        assert_same_answer(ours, reference_answer(other, labels, photo_bytes["coffee"]))


def test_torchserve_finds_the_handler_class_as_its_entry_point() -> None:
    """TorchServe's own loader takes the one class the handler module defines; a second class
    there (even a dataclass) stops every worker from loading."""
    from ts.model_loader import TsModelLoader

    import resnet_handler

    handle, initialize = TsModelLoader()._get_class_entry_point(resnet_handler)
    assert isinstance(handle.__self__, ResNetClassifierHandler)
    assert initialize.__self__ is handle.__self__


def test_grpc_calls_are_told_their_answer_ends_the_stream(handler_and_context, photo_bytes):
    """gRPC requests (no HTTP header, or only TorchServe's sequence keys) get ts_stream_next
    false, which keeps StreamPredictions from killing the worker; REST requests never do."""
    handler, context = handler_and_context
    photo = photo_bytes["coffee"]
    context.headers = [
        {"Content-Length": "5", "explain": "False", "body": {"content-type": "image/png"}},
        {"data": {"content-type": ""}},
        {"ts_request_sequence_id": "s1", "ts_request_sequence_end": "true"},
    ]
    context.statuses, context.response_headers = {}, {}
    answers = handler.handle([{"body": photo}, {"data": photo}, {"data": photo}], context)
    assert all(len(answer) == 5 for answer in answers)
    assert context.response_headers == {
        1: {"ts_stream_next": "false"},
        2: {"ts_stream_next": "false"},
    }
