"""JIT=trace: a traced ResNet passes the same parity gate as a scripted one and serves the same
answers at any batch size and layout; a model that branches on its input traces wrongly, and
the gate's photos catch it where a check on the trace's own example would not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_mar.build import (
    TRACE_EXAMPLE,
    BuildRequest,
    BuildResult,
    build_model,
    checked_parity,
)
from resnet_mar.export import export_torchscript
from resnet_mar.parity import ParityError, ParityInput, check_parity
from resnet_mar.photos import PhotosMissingError, photo_paths, photo_tensors
from resnet_mar.torchserve import REPO_ROOT
from resnet_mar.weights import STANDARD_IMAGENET, load_weights
from tests.fake_context import initialized_handler, unpacked_model_dir
from tests.reference import assert_same_answer, reference_answer

pytestmark = pytest.mark.builds  # builds models itself: left out of make check


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """Untrained resnet18 (seed 0) built as `make script JIT=trace` builds it."""
    out = tmp_path_factory.mktemp("trace")
    return build_model(BuildRequest("resnet18", weights="none", jit="trace"), out)


@pytest.fixture(scope="module")
def eager() -> nn.Module:
    return load_weights("resnet18", "none", seed=0).model.eval()


@pytest.fixture(scope="module")
def photo_inputs() -> dict[str, torch.Tensor]:
    """Each photo as the model sees it (torchvision's transform)."""
    return photo_tensors(STANDARD_IMAGENET)


def test_trace_build_records_its_jit_example_and_parity_photos(traced: BuildResult) -> None:
    provenance = json.loads(traced.provenance_file.read_text())
    assert provenance["jit"] == {
        "mode": "trace",
        "example": [f"photo {name}" for name in TRACE_EXAMPLE],
    }
    parity = provenance["parity"]
    sources = [c["source"] for c in parity["checked_on"]]
    # Every photo alone, not only the two the trace ran on.
    assert {f"photo {name}" for name in photo_paths()} <= set(sources)
    assert max(c["batch_size"] for c in parity["checked_on"]) > 8
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]


@pytest.mark.parametrize("size", [1, 2, 5, 12])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_traced_file_gives_the_eager_logits_at_any_batch_and_layout(
    traced: BuildResult, eager: nn.Module, photo_inputs, size: int, channels_last: bool
) -> None:
    """Batch sizes the trace (2) and the gate (1, 3, 8, 16) did not all use, photos repeated
    with noise so no two images are equal."""
    model = torch.jit.load(str(traced.model_file))
    generator = torch.Generator().manual_seed(size)
    images = list(photo_inputs.values()) * 3
    batch = torch.stack(images[:size]) + 0.1 * torch.randn(size, 3, 224, 224, generator=generator)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    batch = batch.contiguous(memory_format=layout)
    with torch.inference_mode():
        expected, actual = eager(batch), model(batch)
    assert torch.equal(expected.topk(5).indices, actual.topk(5).indices)
    assert torch.allclose(expected, actual, rtol=1e-4, atol=1e-4)


def test_handler_serves_a_traced_model(traced, eager, photo_bytes, tmp_path: Path) -> None:
    model_dir = unpacked_model_dir(traced.model_file.parent, "resnet18", tmp_path / "model")
    handler, context = initialized_handler(model_dir, "resnet18.pt")
    names = list(photo_bytes)
    context.headers = [{} for _ in names]
    answers = handler.handle([{"body": photo_bytes[name]} for name in names], context)
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    for name, answer in zip(names, answers, strict=True):
        assert_same_answer(answer, reference_answer(eager, labels, photo_bytes[name]))


class BranchesOnBrightness(nn.Module):
    """A small classifier whose forward branches on its input's values: a batch brighter than
    the ImageNet mean goes through one head, a darker one through another."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.bright = nn.Linear(8, 10)
        self.dark = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if bool(x.mean() > 0):
            return self.bright(features)
        return self.dark(features)


def test_the_parity_gate_catches_a_trace_that_took_one_branch(
    photo_inputs: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    model = BranchesOnBrightness().eval()
    example = torch.stack([photo_inputs[name] for name in TRACE_EXAMPLE])
    # The premise: the trace's example is dark, and one photo of the gate is bright.
    assert example.mean() < 0 < photo_inputs["astronaut"].mean()

    scripted = export_torchscript(model, tmp_path / "s.pt", STANDARD_IMAGENET, jit="script")
    checked_parity(model, scripted, photo_inputs, model_format="torchscript", jit="script")

    with pytest.warns(torch.jit.TracerWarning, match="might cause the trace to be incorrect"):
        traced = export_torchscript(
            model, tmp_path / "t.pt", STANDARD_IMAGENET, jit="trace", example=example
        )
    # Checked on its own example alone, the wrong trace would pass (torch only warned)...
    check_parity(model, traced, [ParityInput("the trace's example", example)])
    # ...the gate's photos catch it, name the photo, and say what to do.
    with pytest.raises(ParityError) as caught:
        checked_parity(model, traced, photo_inputs, model_format="torchscript", jit="trace")
    message = str(caught.value)
    assert "photo astronaut (batch 1: top-5 differs)" in message
    assert "photo grace_hopper" not in message  # the dark photos took the recorded branch
    assert message.endswith("Build it with JIT=script")


def test_cli_refuses_trace_with_another_format(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnet_mar", "build", "--models", "resnet18", "--weights",
         "none", "--format", "onnx", "--jit", "trace", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "JIT=trace applies to FORMAT=torchscript only" in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_build_without_the_photos_packages_says_how_to_get_them(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now fails
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(PhotosMissingError, match=r"cannot import skimage.*install -e '\.\[dev\]'"):
        photo_paths()
