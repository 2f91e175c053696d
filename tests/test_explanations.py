"""Integrated-gradients explanations without a server: completeness on real photos through the
served (frozen TorchScript) files, the handler's answers and refusals, mixed batches, the cost
bound of the archive's settings, and the turns explanations take."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Resize

from resnet_handler import decode_image, model_input
from resnet_mar.weights import STANDARD_IMAGENET, load_weights
from resnet_serving.explanation_turns import ExplanationTurns
from resnet_serving.explanations import (
    SIGNIFICANT_DIGITS,
    black_baseline,
    integrated_gradients,
    rounded,
)
from resnet_serving.serving_schema import HandlerSettings
from tests.fake_context import initialized_handler, unpacked_model_dir
from tests.reference import assert_same_answer, reference_answer
from tests.served_models import max_response_size

EXPLAIN = {"explain": "True"}  # what TorchServe adds to /explanations and :explain requests
DEFAULTS = HandlerSettings(
    architecture="resnet18",
    model_format="torchscript",
    preprocessing=STANDARD_IMAGENET,
    worker_environment={},
)


def image_of(photo: bytes) -> torch.Tensor:
    """A photo as the handler feeds it to the model: 1 x 3 x 224 x 224, normalised, NCHW."""
    return model_input([decode_image(photo, DEFAULTS)], DEFAULTS)


def logits_at(model: torch.jit.ScriptModule, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(image)[0]


def completeness_gap(
    model: torch.jit.ScriptModule, image: torch.Tensor, target: int, attributions_sum: float
) -> float:
    """|sum of the attributions - (logit at the image - logit at the black picture)|, with
    the logits computed here, apart from Captum."""
    baseline = black_baseline(STANDARD_IMAGENET, image)
    difference = logits_at(model, image)[target] - logits_at(model, baseline)[target]
    return abs(attributions_sum - float(difference))


@pytest.fixture(scope="module")
def served_models(build_dir: Path) -> dict[str, torch.jit.ScriptModule]:
    """The very files the archives serve (frozen TorchScript), loaded as the handler does."""
    return {
        name: torch.jit.load(str(build_dir / f"{name}.pt")).eval()
        for name in ("resnet18", "resnet50")
    }


@pytest.mark.parametrize(
    ("name", "photo"),
    [
        ("resnet18", "grace_hopper"),
        ("resnet18", "chelsea"),
        ("resnet18", "astronaut"),
        ("resnet50", "coffee"),
        ("resnet50", "rocket"),
    ],
)
def test_attributions_are_complete_for_the_top1_class_and_not_for_another(
    served_models, photo_bytes, name: str, photo: str
) -> None:
    """IG's completeness: the attributions add up to the target logit at the image minus at
    the baseline, within Captum's delta, with the archive's default steps; that delta is small
    (the integral converged); and the same sum does not fit the runner-up class's logits."""
    model = served_models[name]
    image = image_of(photo_bytes[photo])
    first, second = logits_at(model, image).topk(2).indices.tolist()
    attribution = integrated_gradients(
        model,
        image,
        first,
        baseline=black_baseline(STANDARD_IMAGENET, image),
        steps=DEFAULTS.ig_steps,
        internal_batch=DEFAULTS.ig_internal_batch,
    )
    assert attribution.pixels.shape == (224, 224)
    total = float(attribution.pixels.double().sum())
    tolerance = abs(attribution.delta) + 1e-3
    assert completeness_gap(model, image, first, total) <= tolerance
    baseline = black_baseline(STANDARD_IMAGENET, image)
    difference = logits_at(model, image)[first] - logits_at(model, baseline)[first]
    assert abs(attribution.delta) <= 0.05 * abs(float(difference)), "IG did not converge"
    assert completeness_gap(model, image, second, total) > tolerance


def test_gradients_flow_through_the_frozen_file_as_through_the_eager_model(
    served_models, photo_bytes
) -> None:
    """Freezing turns the weights into constants; the input's gradients stay: IG through the
    served file equals IG through the eager model it was built from (a map of zeros, or of
    another model's gradients, would not)."""
    eager = load_weights("resnet18", "none", seed=0).model.eval()
    image = image_of(photo_bytes["coffee"])
    target = int(logits_at(served_models["resnet18"], image).argmax())
    baseline = black_baseline(STANDARD_IMAGENET, image)
    found = [
        integrated_gradients(
            model, image, target, baseline=baseline, steps=8, internal_batch=8
        ).pixels
        for model in (served_models["resnet18"], eager)
    ]
    assert found[0].abs().max() > 0
    # Equal but for float rounding: folded batch norm moves activations by ~1e-6, which flips
    # a ReLU here and there along the path (measured: relative L2 difference 0.2-0.4%).
    assert float((found[0] - found[1]).norm() / found[1].norm()) < 0.02
    assert float(found[0].sum()) == pytest.approx(float(found[1].sum()), rel=1e-4)


def test_two_photos_get_different_maps(served_models, photo_bytes) -> None:
    model = served_models["resnet18"]
    maps = []
    for photo in ("chelsea", "rocket"):
        image = image_of(photo_bytes[photo])
        target = int(logits_at(model, image).argmax())
        maps.append(
            integrated_gradients(
                model,
                image,
                target,
                baseline=black_baseline(STANDARD_IMAGENET, image),
                steps=8,
                internal_batch=8,
            ).pixels
        )
    assert all(torch.isfinite(m).all() and m.abs().max() > 0 for m in maps)
    assert (maps[0] - maps[1]).abs().mean() > 0.1 * maps[0].abs().mean()


def test_the_baseline_is_the_black_picture() -> None:
    image = torch.zeros(1, 3, 224, 224)
    baseline = black_baseline(STANDARD_IMAGENET, image)
    std = torch.tensor(STANDARD_IMAGENET.std).view(1, 3, 1, 1)
    mean = torch.tensor(STANDARD_IMAGENET.mean).view(1, 3, 1, 1)
    assert baseline.shape == image.shape
    assert torch.allclose(baseline * std + mean, torch.zeros(1, 3, 224, 224), atol=1e-6)


def test_values_are_rounded_to_four_significant_digits() -> None:
    values = torch.tensor([[0.000123456, -98765.4321, 1.5e-8, 0.0]], dtype=torch.float64)
    assert SIGNIFICANT_DIGITS == 4
    assert rounded(values) == [[0.0001235, -98770.0, 1.5e-8, 0.0]]
    # At most 10 characters of JSON each, float32's smallest included: a 224 x 224 map stays
    # under 224 * 224 * 11 bytes (552 KB) with its commas and brackets.
    extremes = torch.tensor([[-1.234567e-12, -3.4e38, -1.4e-45, -0.1234567]])
    assert max(len(json.dumps(value)) for value in rounded(extremes)[0]) == 10


def assert_crop_is_where_the_model_looked(crop: dict, photo: bytes) -> None:
    """The photo cut at the answered box and resized to 224 x 224 is the picture torchvision's
    Resize(256) + CenterCrop(224) gives (within resampling differences); the box moved along
    the photo's longer side, as far as the photo allows (up to an eighth of it), is not."""
    picture = Image.open(io.BytesIO(photo)).convert("RGB")
    assert crop["image_size"] == list(picture.size)
    seen = np.asarray(CenterCrop(224)(Resize(256)(picture)), dtype=np.float64)

    def cut(box) -> np.ndarray:
        return np.asarray(picture.resize((224, 224), box=tuple(box)), dtype=np.float64)

    assert np.abs(cut(crop["box"]) - seen).mean() < 3.0
    left, top, right, bottom = crop["box"]
    width, height = picture.size
    if width >= height:
        shift = min((right - left) / 8, width - right)
        moved = (left + shift, top, right + shift, bottom)
    else:
        shift = min((bottom - top) / 8, height - bottom)
        moved = (left, top + shift, right, bottom + shift)
    assert shift > 10
    assert np.abs(cut(moved) - seen).mean() > 6.0


def handled(handler, context, requests: list[dict], headers: list[dict]) -> list:
    context.headers, context.statuses, context.content_types = headers, {}, {}
    context.response_headers = {}
    return handler.handle(requests, context)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_turns(request: pytest.FixtureRequest) -> FakeClock:
    """Each test starts with the module's handler free to explain, on a clock of its own."""
    clock = FakeClock()
    if "handler_and_context" in request.fixturenames:
        handler, _ = request.getfixturevalue("handler_and_context")
        handler._explanation_turns = ExplanationTurns(handler.settings.explanation_share, clock)
    return clock


def test_an_explanation_request_gets_its_top1_map_as_compact_json(
    handler_and_context, served_models, photo_bytes
) -> None:
    handler, context = handler_and_context
    photo = photo_bytes["grace_hopper"]
    (answer,) = handled(handler, context, [{"body": photo}], [EXPLAIN])
    assert context.statuses == {} and context.content_types[0] == "application/json"
    assert isinstance(answer, str) and len(answer.encode()) < max_response_size()
    explanation = json.loads(answer)
    assert list(explanation) == ["label", "probability", "attributions", "delta", "steps", "crop"]
    assert_crop_is_where_the_model_looked(explanation["crop"], photo)
    labels = dict(enumerate(handler.labels))
    ((label, probability),) = reference_answer(
        served_models["resnet18"], {str(k): v for k, v in labels.items()}, photo, topk=1
    ).items()
    assert explanation["label"] == label
    assert explanation["probability"] == pytest.approx(probability, abs=1e-4)
    assert explanation["steps"] == handler.settings.ig_steps
    pixels = torch.tensor(explanation["attributions"], dtype=torch.float64)
    assert pixels.shape == (224, 224)
    # Completeness still holds once rounded to 4 digits (each value moves by < 5e-4 of itself).
    target = handler.labels.index(label)
    gap = completeness_gap(served_models["resnet18"], image_of(photo), target, float(pixels.sum()))
    assert gap <= abs(explanation["delta"]) + 5e-4 * float(pixels.abs().sum()) + 1e-3


def test_a_mixed_batch_answers_each_request_by_what_it_asked(
    handler_and_context, served_models, photo_bytes
) -> None:
    handler, context = handler_and_context
    labels = {str(i): name for i, name in enumerate(handler.labels)}
    model = served_models["resnet18"]
    requests = [
        {"body": photo_bytes["chelsea"]},
        {"body": photo_bytes["rocket"]},
        {"body": photo_bytes["astronaut"]},
        {"body": b"not an image"},
        {"body": b"not an image either"},
    ]
    headers = [{"explain": "False"}, EXPLAIN, {"X-TopK": "2"}, {}, EXPLAIN]
    answers = handled(handler, context, requests, headers)
    assert_same_answer(answers[0], reference_answer(model, labels, photo_bytes["chelsea"]))
    assert_same_answer(answers[2], reference_answer(model, labels, photo_bytes["astronaut"], 2))
    explained = json.loads(answers[1])
    top1 = reference_answer(model, labels, photo_bytes["rocket"], topk=1)
    assert explained["label"] == next(iter(top1))
    # the batch's second explanation waits its turn, before its body is even decoded
    assert context.statuses == {3: (400, "NotAnImage"), 4: (503, "ExplanationsBusy")}
    assert answers[3]["type"] == "NotAnImage" and answers[4]["type"] == "ExplanationsBusy"


def test_an_explanation_that_fails_to_decode_leaves_the_turn_free(
    handler_and_context, photo_bytes
) -> None:
    handler, context = handler_and_context
    handled(handler, context, [{"body": b"not an image"}], [EXPLAIN])
    assert context.statuses == {0: (400, "NotAnImage")}
    (answer,) = handled(handler, context, [{"body": photo_bytes["rocket"]}], [EXPLAIN])
    assert context.statuses == {} and json.loads(answer)["steps"] == handler.settings.ig_steps


def test_explanations_take_their_share_of_the_worker_and_the_rest_wait(
    handler_and_context, photo_bytes, fresh_turns: FakeClock, monkeypatch
) -> None:
    """One explanation a batch; after one that took t seconds, the next waits
    t * (1 - share) / share, and those that come meanwhile get 503 with a Retry-After."""
    handler, context = handler_and_context
    settings = dataclasses.replace(handler.settings, ig_steps=2)  # the cost is not the point
    monkeypatch.setattr(handler, "settings", settings)
    share = settings.explanation_share
    explain = handler.explain

    def taking_three_seconds(*args):
        fresh_turns.now += 3.0
        return explain(*args)

    monkeypatch.setattr(handler, "explain", taking_three_seconds)
    photo = {"body": photo_bytes["rocket"]}
    wait = 3.0 * (1 - share) / share
    answers = handled(handler, context, [photo] * 3, [EXPLAIN] * 3)
    assert json.loads(answers[0])["steps"] == 2
    assert context.statuses == {1: (503, "ExplanationsBusy"), 2: (503, "ExplanationsBusy")}
    assert f"{share:.0%} of its time" in answers[1]["message"]
    fresh_turns.now += wait - 0.5
    answers = handled(handler, context, [photo, photo], [EXPLAIN, {}])
    assert context.statuses == {0: (503, "ExplanationsBusy")}
    assert context.response_headers[0]["Retry-After"] == "1"
    assert "retry in 1 s" in answers[0]["message"]
    assert len(answers[1]) == handler.settings.topk  # predictions never wait their turn
    fresh_turns.now += 0.5
    (answer,) = handled(handler, context, [photo], [EXPLAIN])
    assert context.statuses == {} and json.loads(answer)["steps"] == 2


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_an_explanation_share_outside_0_to_1_is_refused_at_build_time(share: float) -> None:
    with pytest.raises(ValueError, match="explanation_share must be in"):
        dataclasses.replace(DEFAULTS, explanation_share=share)


def test_without_captum_explanations_are_501_and_predictions_still_answered(
    build_dir, tmp_path, photo_bytes, monkeypatch
) -> None:
    for module in [name for name in sys.modules if name.split(".")[0] == "captum"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now raises ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path / "model")
    handler, context = initialized_handler(model_dir, "resnet18.pt")  # loads all the same
    photo = photo_bytes["coffee"]
    answers = handled(handler, context, [{"body": photo}, {"body": photo}], [EXPLAIN, {}])
    assert context.statuses == {0: (501, "ExplanationsUnavailable")}
    assert answers[0]["code"] == 501 and "captum" in answers[0]["message"]
    assert json.dumps(answers[0])
    model = torch.jit.load(str(build_dir / "resnet18.pt")).eval()
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    assert_same_answer(answers[1], reference_answer(model, labels, photo))


def test_kserve_v1_explain_and_the_refusals_of_other_shapes(handler_and_context, photo_bytes):
    handler, context = handler_and_context
    encoded = base64.b64encode(photo_bytes["chelsea"]).decode()
    v1_one = {"body": {"instances": [{"b64": encoded}]}}
    v1_two = {"body": {"instances": [encoded, encoded]}}
    v2 = {"body": {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": [encoded]}]}}
    answers = handled(handler, context, [v1_one, v1_two, v2], [EXPLAIN] * 3)
    (explanation,) = json.loads(answers[0])["explanations"]
    assert len(explanation["attributions"]) == 224
    assert context.statuses == {1: (413, "TooManyImages"), 2: (501, "ExplanationsUnsupported")}
    assert json.loads(answers[1])["error"].startswith(
        "TooManyImages: 2 images in one explanation request"
    )
    assert "/explanations/<model>" in json.loads(answers[2])["error"]


def test_one_explanation_costs_what_the_settings_allow(
    handler_and_context, photo_bytes, monkeypatch
) -> None:
    """ig_steps gradient evaluations, at most ig_internal_batch images per pass: counted on
    the model's calls that carry gradients."""
    handler, context = handler_and_context
    settings = dataclasses.replace(handler.settings, ig_steps=6, ig_internal_batch=4)
    monkeypatch.setattr(handler, "settings", settings)
    model, passes = handler.model, []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        if batch.requires_grad:
            passes.append(batch.shape[0])
        return model(batch)

    monkeypatch.setattr(handler, "model", counting)
    (answer,) = handled(handler, context, [{"body": photo_bytes["rocket"]}], [EXPLAIN])
    assert json.loads(answer)["steps"] == 6
    assert passes == [4, 2]
