"""FORMAT=int8: NNCF post-training quantization on real photos, run by OpenVINO, and the quality
gate against the FP32 model on photos held aside from calibration."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from resnet_mar.build import BuildError, BuildRequest, BuildResult, build_model
from resnet_mar.calibration import CalibrationError, calibration_set
from resnet_mar.quantization import (
    TRAINED_CONFIDENCE,
    QualityError,
    calibrate_confidence,
    check_quality,
    estimate_batchnorm,
)
from resnet_mar.weights import load_weights
from resnet_serving.model_runtimes import load_openvino
from tests.fake_context import initialized_handler, unpacked_build

pytestmark = pytest.mark.builds  # builds models itself: left out of make check

#: Untrained networks cannot meet the trained-model target of the gate (the top-1 probability
#: within 0.05; measured 0.12-0.16 here): the test builds relax it, as README says.
RELAXED = {"int8_min_agreement": 0.6, "int8_max_error": 0.5}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("int8")
    return build_model(
        BuildRequest("resnet18", weights="none", model_format="int8", **RELAXED), out
    )


@pytest.fixture(scope="module")
def fp32_reference():
    """The FP32 network the int8 build quantized, rebuilt independently: untrained resnet18,
    BatchNorm statistics from the calibration photos, last layer scaled to trained confidence."""
    loaded = load_weights("resnet18", "none")
    calibration = calibration_set(loaded.preprocessing)
    estimate_batchnorm(loaded.model, calibration.images)
    calibrate_confidence(loaded.model, calibration.images)
    return loaded.model.eval(), calibration


def test_the_build_records_calibration_and_quality(built: BuildResult) -> None:
    provenance = json.loads(built.provenance_file.read_text())
    assert provenance["model_file"] == "resnet18.int8.onnx" and "parity" not in provenance
    calibration = provenance["calibration"]
    assert calibration["images"] == 160 and len(calibration["photos"]) == 12
    assert not set(calibration["photos"]) & set(calibration["held_aside"])
    assert "BatchNorm statistics estimated" in calibration["untrained"]
    quality = provenance["quality"]
    assert quality["photos"] == 5 and quality["top1_agreement"] >= RELAXED["int8_min_agreement"]
    assert quality["max_top1_probability_error"] <= RELAXED["int8_max_error"]
    assert built.model_file.stat().st_size < 15e6  # int8 weights: about a quarter of FP32's 45 MB


def test_the_gate_measures_int8_against_fp32_and_can_fail(built, fp32_reference) -> None:
    """Rebuilt independently, the FP32 network and the int8 file give the figures the build
    recorded; with the trained-model target the same comparison stops the build."""
    model, calibration = fp32_reference
    int8 = load_openvino(str(built.model_file), torch.get_num_threads())
    relaxed = check_quality(
        model,
        int8,
        calibration.held_aside,
        min_top1_agreement=RELAXED["int8_min_agreement"],
        max_top1_probability_error=RELAXED["int8_max_error"],
    )
    recorded = built.provenance["quality"]
    remeasured = dataclasses.asdict(relaxed)
    assert set(remeasured) == set(recorded)
    for figure, value in recorded.items():
        assert remeasured[figure] == pytest.approx(value, abs=1e-5), figure
    with pytest.raises(QualityError, match="top-1 probability off by up to"):
        check_quality(model, int8, calibration.held_aside)


def test_untrained_answers_depend_on_the_photo_once_calibrated(fp32_reference) -> None:
    """Why untrained networks get real BatchNorm statistics and a trained confidence before
    quantization: otherwise the gate compares two near-uniform answers and cannot fail."""
    model, calibration = fp32_reference
    plain = load_weights("resnet18", "none").model.eval()
    with torch.inference_mode():
        before = plain(calibration.held_aside).softmax(dim=1)
        after = model(calibration.held_aside).softmax(dim=1)
    assert before.max() < 0.05  # every class near 1/1000
    assert after.amax(dim=1).mean() > 0.3
    with torch.inference_mode():  # the calibrated mean confidence is the target
        calibrated = model(calibration.images).softmax(dim=1).amax(dim=1).mean().item()
    assert calibrated == pytest.approx(TRAINED_CONFIDENCE, abs=1e-3)


def test_the_handler_serves_int8_with_openvino(built: BuildResult, tmp_path: Path) -> None:
    unpacked_build(built.model_file, built.archive_dir, tmp_path)
    handler, _ = initialized_handler(tmp_path, built.model_file.name)
    batch = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    direct = load_openvino(str(built.model_file), 1)(batch).softmax(dim=1)
    assert torch.allclose(handler.classify(batch), direct, atol=1e-6)


def test_calibration_from_a_folder_holds_every_fifth_image_aside(tmp_path: Path, photos) -> None:
    from resnet_mar.weights import STANDARD_IMAGENET

    (tmp_path / "few").mkdir()
    with pytest.raises(CalibrationError, match="holds 0 images"):
        calibration_set(STANDARD_IMAGENET, tmp_path / "few")
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(10):
        shutil.copy(
            list(photos.values())[i % 5], folder / f"{i:02d}{list(photos.values())[i % 5].suffix}"
        )
    found = calibration_set(STANDARD_IMAGENET, folder)
    assert len(found.sources) == 8 and len(found.held_aside_sources) == 2
    assert found.images.shape == (160, 3, 224, 224) and found.held_aside.shape[0] == 2


def test_calibration_goes_with_int8_only(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="CALIBRATION goes with FORMAT=int8"):
        build_model(BuildRequest("resnet18", weights="none", calibration=tmp_path), tmp_path)
    with pytest.raises(BuildError, match=r"in 0\.\.1"):
        build_model(
            BuildRequest("resnet18", weights="none", model_format="int8", int8_max_error=2),
            tmp_path,
        )
