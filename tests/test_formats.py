"""FORMAT=torchscript | onnx | aoti | openvino: every exact format's build passes the parity check
against eager, and the handler's own runtime (resnet_serving.model_runtimes) reads the built file
back to the eager model's logits. (FORMAT=int8, checked by a quality gate instead: test_int8.py.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from resnet_handler import ResNetClassifierHandler
from resnet_mar.build import BuildError, BuildRequest, BuildResult, build_model
from resnet_mar.weights import load_weights, sha256_of
from resnet_serving import model_runtimes
from tests.fake_context import initialized_handler, unpacked_build

pytestmark = pytest.mark.builds  # builds models itself: left out of make check

#: Format -> the suffix archive.sh finds it by. AOTInductor compiles C++ for ~15-30 s on two
#: cores for resnet18: slow, but well within a default test run.
FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "aoti": ".pt2", "openvino": ".onnx"}


@pytest.fixture(scope="module", params=list(FORMATS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """An untrained resnet18 (seed 0) built once per format, as `make script FORMAT=...` would."""
    out = tmp_path_factory.mktemp(request.param)
    return build_model(BuildRequest("resnet18", weights="none", model_format=request.param), out)


@pytest.fixture(scope="module")
def eager() -> torch.nn.Module:
    """The same untrained resnet18 the builds start from."""
    return load_weights("resnet18", "none", seed=0).model.eval()


def test_build_records_parity_and_format(built: BuildResult) -> None:
    provenance = json.loads(built.provenance_file.read_text())
    model_format = provenance["format"]
    assert built.model_file.name == provenance["model_file"] == f"resnet18{FORMATS[model_format]}"
    assert provenance["sha256"] == sha256_of(built.model_file)
    parity = provenance["parity"]
    assert parity["top5_identical"] is True
    assert [c["batch_size"] for c in parity["checked_on"]] == [1, 1, 1, 1, 1, 3, 8, 1, 3, 16]
    # The handler feeds channels-last batches to TorchScript only; the check feeds what it does.
    layouts = {c["layout"] for c in parity["checked_on"] if c["batch_size"] > 1}
    assert layouts == ({"channels_last"} if model_format == "torchscript" else {"nchw"})
    assert provenance["jit"] == ({"mode": "script"} if model_format == "torchscript" else None)
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]
    config = yaml.safe_load((built.archive_dir / "model-config.yaml").read_text())
    assert config["handler"]["model_format"] == model_format


def test_handler_runtime_gives_the_eager_logits(built: BuildResult, eager: torch.nn.Module) -> None:
    """An independent re-check of the build's claim, through the loader the server uses."""
    model_format = built.provenance["format"]
    # The current thread count: the runtime must not change the test session's torch threads.
    forward = model_runtimes.load_model(
        str(built.model_file), model_format, torch.get_num_threads()
    )
    batch = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(99))
    with torch.inference_mode():
        expected, actual = eager(batch), forward(batch)
    assert actual.shape == (3, 1000)
    assert torch.equal(expected.topk(5).indices, actual.topk(5).indices)
    assert torch.allclose(expected, actual, rtol=1e-4, atol=1e-4)


def served_handler(built: BuildResult, model_dir: Path) -> tuple[ResNetClassifierHandler, Any]:
    """The handler initialised on the build's files, unpacked as TorchServe would."""
    unpacked_build(built.model_file, built.archive_dir, model_dir)
    return initialized_handler(model_dir, built.model_file.name)


def test_handler_serves_every_format(
    built: BuildResult, eager: torch.nn.Module, tmp_path: Path
) -> None:
    """``initialize`` picks the runtime from model-config.yaml; ``classify`` gives softmax."""
    handler, _ = served_handler(built, tmp_path)
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    probabilities = handler.classify(batch)
    with torch.inference_mode():
        expected = eager(batch).softmax(dim=1)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    assert torch.allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_explanations_need_a_format_with_gradients(
    built: BuildResult, tmp_path: Path, photo_bytes, monkeypatch
) -> None:
    """TorchScript explains; ONNX Runtime and AOTInductor compute no gradients: 501, while
    the same worker keeps answering predictions."""
    handler, context = served_handler(built, tmp_path)
    monkeypatch.setattr(handler, "settings", dataclasses.replace(handler.settings, ig_steps=4))
    context.headers = [{"explain": "True"}, {}]
    photo = photo_bytes["chelsea"]
    explanation, prediction = handler.handle([{"body": photo}, {"body": photo}], context)
    assert len(prediction) == 5
    model_format = built.provenance["format"]
    if model_format == "torchscript":
        assert context.statuses == {}
        assert json.loads(explanation)["steps"] == 4
    else:
        assert context.statuses == {0: (501, "ExplanationsUnsupported")}
        assert f"served as {model_format}" in explanation["message"]


def test_unknown_format_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    valid = ", ".join([*FORMATS, "int8"])
    with pytest.raises(BuildError, match=f"unknown FORMAT 'tensorrt'; valid: {valid}"):
        build_model(BuildRequest("resnet18", weights="none", model_format="tensorrt"), tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match=f"handler serves: {valid}"):
        model_runtimes.load_model(str(tmp_path / "resnet18.trt"), "tensorrt", 1)
