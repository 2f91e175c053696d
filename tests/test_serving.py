"""Integration: archives made by archive.sh, served by a real TorchServe as make serve runs one
(conftest.py's session server), answers checked against the in-process reference of each
archive."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Resize

from resnet_mar.explanation_overlay import SCALE_WIDTH
from resnet_mar.torchserve import RunningServer
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from tests.odd_images import (
    DECODE_LIMITS,
    broken_inputs,
    png_file,
    progressive_jpeg,
    sixteen_bit_png,
    valid_images,
)
from tests.photos import PHOTOS
from tests.reference import STANDARD_IMAGENET, assert_same_answer, reference_answer
from tests.served_models import CUSTOM_LABELS, MODELS, VERSION, max_response_size
from tests.server_probes import peak_rss_mb, reset_peak_rss, resident_mb, worker_pids

pytestmark = pytest.mark.integration


def predict(server: RunningServer, path: str, body: bytes, **kwargs) -> requests.Response:
    return requests.put(f"{server.endpoints.inference}/{path}", data=body, timeout=120, **kwargs)


def test_workers_run_in_the_environment_they_are_tuned_for(server: RunningServer) -> None:
    """What ``make serve`` and the benchmark give the workers (GOMP_SPINCOUNT, ...) reaches
    them: read back from each worker process itself."""
    for name, pids in worker_pids(server).items():
        for pid in pids:
            environ = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in item
            )
            for key, value in WORKER_ENVIRONMENT.items():
                assert environ.get(key) == value, f"{name} worker {pid}: {key}={environ.get(key)}"


def test_ping_and_models(server: RunningServer) -> None:
    assert requests.get(f"{server.endpoints.inference}/ping", timeout=10).json() == {
        "status": "Healthy"
    }
    _, listed = server.management("GET", "/models")
    assert sorted(m["modelName"] for m in listed["models"]) == sorted(MODELS)
    _, described = server.management("GET", "/models/resnet50")
    assert described[0]["modelVersion"] == VERSION
    assert described[0]["batchSize"] >= 4
    assert [w["status"] for w in described[0]["workers"]] == ["READY"]


@pytest.mark.parametrize("name", MODELS)
def test_served_answers_equal_the_in_process_reference(server, references, photo_bytes, name):
    model, labels = references[name]
    for photo, body in photo_bytes.items():
        response = predict(server, f"predictions/{name}", body)
        assert response.status_code == 200, (photo, response.text)
        assert response.headers["content-type"].startswith("application/json")
        expected = reference_answer(model, labels, body)
        assert_same_answer(response.json(), expected)
        if name == "flowers":
            assert set(response.json()) <= set(CUSTOM_LABELS)


def test_versioned_endpoint_and_topk(server, references, photo_bytes) -> None:
    model, labels = references["resnet50"]
    body = photo_bytes["chelsea"]
    response = predict(server, f"predictions/resnet50/{VERSION}", body, headers={"X-TopK": "3"})
    assert response.status_code == 200, response.text
    assert_same_answer(response.json(), reference_answer(model, labels, body, topk=3))
    missing = predict(server, "predictions/resnet50/9.9", body)
    assert missing.status_code == 404


def test_topk_is_clamped_to_the_custom_model_classes(server, photo_bytes) -> None:
    response = predict(
        server, "predictions/flowers", photo_bytes["coffee"], headers={"X-TopK": "50"}
    )
    assert response.status_code == 200
    assert sorted(response.json()) == sorted(CUSTOM_LABELS)


def test_curl_upload_file(server, references, photos) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (apt-get install curl)"
    url = f"{server.endpoints.inference}/predictions/resnet18"
    result = subprocess.run(
        [curl, "-sS", "-T", str(photos["grace_hopper"]), url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, labels = references["resnet18"]
    assert_same_answer(
        json.loads(result.stdout),
        reference_answer(model, labels, photos["grace_hopper"].read_bytes()),
    )


def test_multipart_and_base64_bodies(server, references, photo_bytes) -> None:
    model, labels = references["resnet18"]
    body = photo_bytes["astronaut"]
    expected = reference_answer(model, labels, body)
    url = f"{server.endpoints.inference}/predictions/resnet18"
    multipart = requests.post(url, files={"data": ("a.png", body)}, timeout=120)
    assert_same_answer(multipart.json(), expected)
    as_json = requests.post(url, json={"data": base64.b64encode(body).decode()}, timeout=120)
    assert_same_answer(as_json.json(), expected)
    as_text = requests.post(
        url, data=base64.b64encode(body), headers={"Content-Type": "text/plain"}, timeout=120
    )
    assert_same_answer(as_text.json(), expected)


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        (b"", {}, 400, "EmptyBody"),
        (b"definitely not a picture", {}, 400, "NotAnImage"),
        (PHOTOS["rocket"].read_bytes()[:20000], {}, 400, "TruncatedImage"),
        (b"P6\n2 2\n255\n" + b"\x00" * 12, {}, 415, "UnsupportedImageFormat"),
        (b"aGVsbG8=!!", {"Content-Type": "text/plain"}, 400, "MalformedBase64"),
    ],
    ids=["empty", "text", "truncated-jpeg", "ppm", "bad-base64"],
)
def test_broken_input_is_a_4xx_with_a_json_message(server, body, headers, status, kind) -> None:
    response = predict(server, "predictions/resnet18", body, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["code"] == status and answer["type"] == kind and answer["message"]


@pytest.fixture(scope="module")
def held_out_photo(photos) -> Image.Image:
    """A photo the decoding unit tests do not use, at another size."""
    return Image.open(photos["coffee"]).convert("RGB")


def test_odd_but_valid_images_are_served_correctly(server, references, held_out_photo) -> None:
    model, labels = references["resnet50"]
    cases = valid_images(held_out_photo, size=(301, 203))
    assert len(cases) >= 20
    for name, case in cases.items():
        response = predict(server, "predictions/resnet50", case.data)
        assert response.status_code == 200, (name, response.text)
        # 16-bit RGB: no Pillow mode holds it, so Pillow's own 8-bit reading (the high byte, at
        # most 1 below value/257) is both what the handler serves and the reference here.
        picture = Image.open(io.BytesIO(case.data)) if case.tolerance else case.reference
        assert_same_answer(response.json(), reference_answer(model, labels, picture))


def test_broken_files_are_refused_with_a_json_message(server, held_out_photo) -> None:
    for name, case in broken_inputs(held_out_photo).items():
        response = predict(server, "predictions/resnet50", case.data)
        assert response.status_code == case.status, (name, response.text)
        answer = response.json()
        assert (answer["code"], answer["type"]) == (case.status, case.kind), name
        assert case.says in answer["message"].lower(), (name, answer["message"])


def test_bad_option_is_a_400(server, photo_bytes) -> None:
    response = predict(
        server, "predictions/resnet18", photo_bytes["rocket"], headers={"X-TopK": "0"}
    )
    assert response.status_code == 400
    assert "topk must be a positive integer" in response.json()["message"]


def test_concurrent_mixed_requests_each_answered_alone(server, references, photo_bytes) -> None:
    """Good and bad requests batched together: every good one equals its reference, every bad
    one gets its own 4xx, and no worker restarts."""
    pids_before = worker_pids(server)
    good = list(photo_bytes.items())
    bad = [b"", b"garbage" * 10, photo_bytes["rocket"][:2000], b"GIF89a" + b"\x00" * 30]
    jobs = [("good", *good[i % len(good)]) for i in range(24)] + [
        ("bad", f"bad{i}", bad[i % len(bad)]) for i in range(12)
    ]
    jobs = jobs[::2] + jobs[1::2]  # interleave so batches mix good and bad
    model, labels = references["resnet18"]

    def send(job):
        return job, predict(server, "predictions/resnet18", job[2])

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, jobs))

    for (kind, photo, body), response in results:
        if kind == "good":
            assert response.status_code == 200, (photo, response.text)
            assert_same_answer(response.json(), reference_answer(model, labels, body))
        else:
            assert 400 <= response.status_code < 500, (photo, response.status_code, response.text)
            assert response.json()["message"]
    assert worker_pids(server) == pids_before


def in_turn(send, attempts: int = 10) -> requests.Response:
    """An explanation as a client should ask for one: again after Retry-After on a 503."""
    for _ in range(attempts):
        response = send()
        if response.status_code != 503:
            return response
        time.sleep(int(response.headers["Retry-After"]))
    return response


def check_explanation(explanation: dict, model, labels: dict, body: bytes) -> None:
    """The top-1 class and its probability equal the in-process reference's, and the map's sum
    is that class's logit at the photo minus at the black picture, within Captum's delta (plus
    the rounding to 4 digits), all computed here from the archive's own model."""
    image = STANDARD_IMAGENET(Image.open(io.BytesIO(body)).convert("RGB")).unsqueeze(0)
    mean = torch.tensor(STANDARD_IMAGENET.mean).view(1, 3, 1, 1)
    black = ((0 - mean) / torch.tensor(STANDARD_IMAGENET.std).view(1, 3, 1, 1)).expand_as(image)
    with torch.inference_mode():
        at_image, at_black = model(image)[0], model(black.contiguous())[0]
    target = int(at_image.argmax())
    assert explanation["label"] == labels[str(target)]
    probability = float(at_image.softmax(dim=0)[target])
    assert explanation["probability"] == pytest.approx(probability, abs=1e-4)
    pixels = torch.tensor(explanation["attributions"], dtype=torch.float64)
    assert pixels.shape == (224, 224)
    gap = abs(float(pixels.sum()) - float(at_image[target] - at_black[target]))
    assert gap <= abs(explanation["delta"]) + 5e-4 * float(pixels.abs().sum()) + 1e-3


def test_explanations_endpoint(server, references, photos) -> None:
    """`curl -T photo.jpg .../explanations/resnet18`, as the README shows it."""
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (apt-get install curl)"
    url = f"{server.endpoints.inference}/explanations/resnet18"
    result = subprocess.run(
        [curl, "-sS", "--retry", "10", "-w", "\n%{http_code} %{content_type}",
         "-T", str(photos["grace_hopper"]), url],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200 application/json", body[:300]
    assert len(body.encode()) < max_response_size()
    model, labels = references["resnet18"]
    check_explanation(json.loads(body), model, labels, photos["grace_hopper"].read_bytes())


def test_a_kserve_explanation_among_concurrent_predictions(server, references, photo_bytes):
    """One v1 `:explain` sent with predictions of the same model: every prediction still equals
    its reference, and the explanation is the photo's own."""
    model, labels = references["resnet18"]
    explained = photo_bytes["rocket"]
    v1 = {"instances": [{"b64": base64.b64encode(explained).decode()}]}
    url = server.endpoints.inference

    def explain():
        return in_turn(lambda: requests.post(f"{url}/v1/models/resnet18:explain", json=v1))

    with ThreadPoolExecutor(max_workers=8) as pool:
        explanation = pool.submit(explain)
        predictions = [
            (body, pool.submit(predict, server, "predictions/resnet18", body))
            for body in list(photo_bytes.values()) * 2
        ]
        for body, response in predictions:
            assert response.result().status_code == 200, response.result().text
            assert_same_answer(response.result().json(), reference_answer(model, labels, body))
        response = explanation.result()
    assert response.status_code == 200, response.text[:300]
    (answer,) = response.json()["explanations"]
    check_explanation(answer, model, labels, explained)


def test_body_over_the_request_size_limit_is_413(server) -> None:
    twelve_megabytes = b"\xff\xd8\xff" + b"\x00" * (12 * 1024 * 1024)
    response = predict(server, "predictions/resnet18", twelve_megabytes)
    assert response.status_code == 413
    assert predict(server, "predictions/resnet18", b"").status_code == 400  # still serving


def test_decoding_bounds_hold_beside_good_requests(server, references, photo_bytes) -> None:
    """Sent together: a one-pixel strip under the pixel limit but over the bytes one, a JPEG
    repeating a scan thousands of times, three large 16-bit RGBA PNGs (legal: the decode budget
    makes them take turns) and good photos for both models. Each bad one is refused alone, every
    good one equals its reference, no worker restarts, and the worker's peak memory stays within
    the documented bound: 3 x max_decoded_bytes."""
    pids_before = worker_pids(server)
    (worker,) = pids_before["resnet18"]
    strip_height = DECODE_LIMITS["max_bytes"] // 12 + 1
    strip = png_file(1, strip_height, 8, 0, zlib.compress(b"\x00\x80" * strip_height))
    scans = progressive_jpeg(3000, 3000)
    large = sixteen_bit_png(7000, 6, b"\x80\x80" * 3 + b"\xff\xff", transparent=False)
    jobs = [("resnet18", "strip", strip), ("resnet18", "scans", scans)]
    jobs += [("resnet18", "large", large)] * 3
    jobs += [(model, name, body) for model in MODELS for name, body in photo_bytes.items()]
    reset_peak_rss(worker)
    resident_before = resident_mb(worker)

    def send(job):
        return job, predict(server, f"predictions/{job[0]}", job[2])

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    peak_rise_mb = peak_rss_mb(worker) - resident_before

    expected = {"strip": "ImageTooLarge", "scans": "ImageTooComplex"}
    for (model, name, body), response in results:
        if name in expected:
            assert response.status_code == 413, (name, response.text)
            assert response.json()["type"] == expected[name], response.text
        else:
            assert response.status_code == 200, (model, name, response.text)
            reference = reference_answer(*references[model], body)
            assert_same_answer(response.json(), reference)
    assert worker_pids(server) == pids_before
    bound_mb = 3 * DECODE_LIMITS["max_bytes"] / 2**20
    assert 150 < peak_rise_mb <= bound_mb, (peak_rise_mb, bound_mb)


def test_a_flood_of_explanations_takes_turns_and_predictions_go_on(
    server, references, photo_bytes
) -> None:
    """32 clients explaining at once (honouring Retry-After) while one client predicts: the
    explanations get 503 ExplanationsBusy with a Retry-After, or their own correct map; every
    prediction is answered and correct; no worker restarts."""
    pids_before = worker_pids(server)
    model, labels = references["resnet18"]
    explained, predicted = photo_bytes["rocket"], photo_bytes["chelsea"]
    url = f"{server.endpoints.inference}/explanations/resnet18"
    flooding, outcomes = threading.Event(), []

    def explainer() -> None:
        while not flooding.is_set():
            response = requests.put(url, data=explained, timeout=300)
            outcomes.append(response)
            if response.status_code == 503:
                time.sleep(min(int(response.headers["Retry-After"]), 2))

    explainers = [threading.Thread(target=explainer) for _ in range(32)]
    for thread in explainers:
        thread.start()
    try:
        time.sleep(1.0)  # the flood is on
        predictions = [predict(server, "predictions/resnet18", predicted) for _ in range(30)]
    finally:
        flooding.set()
        for thread in explainers:
            thread.join(timeout=300)

    for response in predictions:
        assert response.status_code == 200, response.text
        assert_same_answer(response.json(), reference_answer(model, labels, predicted))
    busy = [response for response in outcomes if response.status_code == 503]
    answered = [response for response in outcomes if response.status_code == 200]
    assert len(busy) + len(answered) == len(outcomes), {r.status_code for r in outcomes}
    assert busy and answered, (len(busy), len(answered))
    for response in busy:
        assert response.json()["type"] == "ExplanationsBusy"
        assert int(response.headers["Retry-After"]) >= 1
    for response in answered[:3]:
        check_explanation(response.json(), model, labels, explained)
    assert worker_pids(server) == pids_before


def test_explain_draws_the_served_map_over_the_part_of_the_photo_the_model_saw(
    server, photos, tmp_path
) -> None:
    """`python -m resnet_mar explain photo --out overlay.png`: a PNG whose left square is the
    photo's centre crop (as torchvision's Resize + CenterCrop cut it) under the map, and a
    scale beside it; the same crop moved off centre matches it less."""
    out = tmp_path / "overlay.png"
    result = subprocess.run(
        [sys.executable, "-m", "resnet_mar", "explain", str(photos["grace_hopper"]),
         "--url", server.endpoints.inference, "--model", "resnet18", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    picture = Image.open(out)
    assert (picture.format, picture.size) == ("PNG", (448 + SCALE_WIDTH, 448))
    drawn = np.asarray(picture.convert("L"), dtype=np.float64)[:, :448].ravel()
    photo = Image.open(photos["grace_hopper"]).convert("RGB")

    def grey(crop: Image.Image) -> np.ndarray:
        return np.asarray(crop.resize((448, 448)).convert("L"), dtype=np.float64).ravel()

    centre = np.corrcoef(drawn, grey(CenterCrop(224)(Resize(256)(photo))))[0, 1]
    top = np.corrcoef(drawn, grey(Resize(256)(photo).crop((16, 0, 240, 224))))[0, 1]
    print(f"correlation with the centre crop {centre:.3f}, with the top crop {top:.3f}")
    assert centre > 0.8 and centre > top + 0.1, (centre, top)
