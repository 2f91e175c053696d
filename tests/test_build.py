"""`make script`: TorchScript compilation, the parity check against eager, and what the build
writes for archive.sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from resnet_mar.build import BuildError, BuildRequest, build_model
from resnet_mar.parity import ParityError, check_parity, random_inputs
from resnet_mar.torchserve import REPO_ROOT
from resnet_mar.weights import STANDARD_IMAGENET, load_weights, reference_transforms, sha256_of
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from tests.served_models import CUSTOM_LABELS


def test_build_writes_model_labels_config_and_provenance(build_dir: Path) -> None:
    provenance = json.loads((build_dir / "resnet18.json").read_text())
    assert provenance["architecture"] == "resnet18"
    assert provenance["format"] == "torchscript"
    assert provenance["weights"]["source"] == "untrained"
    assert provenance["weights"]["trained"] is False
    assert provenance["sha256"] == sha256_of(build_dir / "resnet18.pt")
    assert provenance["preprocessing"]["resize_size"] == 256
    assert provenance["jit"] == {"mode": "script"}
    parity = provenance["parity"]
    assert parity["top5_identical"] is True
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"]
    # Checked on each real photo alone, then on batches up to twice the server's, in the
    # channels-last layout the handler feeds TorchScript batches of 3 and more.
    checked = parity["checked_on"]
    assert {c["source"] for c in checked if c["batch_size"] == 1} >= {
        "photo chelsea",
        "photo coffee",
        "photo astronaut",
        "photo rocket",
        "photo grace_hopper",
    }
    assert [(c["batch_size"], c["layout"]) for c in checked if c["batch_size"] > 1] == [
        (3, "channels_last"),
        (8, "channels_last"),
        (3, "channels_last"),
        (16, "channels_last"),
    ]
    assert parity["inputs"] == sum(c["batch_size"] for c in checked)
    assert provenance["versions"]["torch"] == torch.__version__

    config = yaml.safe_load((build_dir / "resnet18" / "model-config.yaml").read_text())
    assert config["batchSize"] >= 4 and config["minWorkers"] == config["maxWorkers"] == 1
    assert config["handler"]["preprocessing"]["crop_size"] == 224
    assert config["handler"]["model_format"] == "torchscript"
    # Threads are resolved where the model is served, never baked in from the build machine.
    assert config["handler"]["intra_op_threads"] == "auto"
    # What the server's workers are tuned for travels with the model (the handler checks it).
    assert config["handler"]["worker_environment"] == WORKER_ENVIRONMENT

    labels = json.loads((build_dir / "resnet18" / "index_to_name.json").read_text())
    assert len(labels) == 1000


def test_scripted_file_matches_the_eager_model(build_dir: Path) -> None:
    """Independent re-check of what the build claims: same seed, same eager model."""
    eager = load_weights("resnet18", "none", seed=0).model.eval()
    scripted = torch.jit.load(str(build_dir / "resnet18.pt"))
    batch = random_inputs(224, channels_last=False, seed=99)[1].batch
    with torch.inference_mode():
        expected, actual = eager(batch), scripted(batch)
    assert torch.equal(expected.topk(5).indices, actual.topk(5).indices)
    assert torch.allclose(expected, actual, rtol=1e-4, atol=1e-4)


def test_custom_label_model_ships_its_own_labels(build_dir: Path) -> None:
    labels = json.loads((build_dir / "flowers" / "index_to_name.json").read_text())
    assert list(labels.values()) == CUSTOM_LABELS
    provenance = json.loads((build_dir / "flowers.json").read_text())
    assert provenance["num_classes"] == len(CUSTOM_LABELS)
    assert provenance["weights"]["source"] == "checkpoint"


def test_parity_check_stops_a_model_that_disagrees() -> None:
    eager = load_weights("resnet18", "none").model.eval()
    inputs = random_inputs(64, channels_last=True)

    def drifted(batch: torch.Tensor) -> torch.Tensor:
        return eager(batch) + 0.05 * torch.randn(batch.shape[0], 1000)

    with pytest.raises(ParityError, match="disagrees with eager"):
        check_parity(eager, drifted, inputs)


def test_bad_requests_stop_the_build(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown FORMAT"):
        build_model(BuildRequest("resnet18", weights="none", model_format="pickle"), tmp_path)
    with pytest.raises(BuildError, match="unknown JIT 'compile'; valid: script, trace"):
        build_model(BuildRequest("resnet18", weights="none", jit="compile"), tmp_path)
    for model_format in ("onnx", "aoti"):
        with pytest.raises(BuildError, match="JIT=trace applies to FORMAT=torchscript only"):
            build_model(
                BuildRequest("resnet18", weights="none", model_format=model_format, jit="trace"),
                tmp_path,
            )
    with pytest.raises(BuildError, match="jpeg_draft_factor must be >= 0"):
        build_model(BuildRequest("resnet18", weights="none", jpeg_draft_factor=-1), tmp_path)
    with pytest.raises(BuildError, match="may hold only"):
        build_model(BuildRequest("resnet18", weights="none", name="../evil"), tmp_path)


def test_cli_reports_an_unknown_model_and_exits_non_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnet_mar", "build", "--models", "resnet18", "vgg16",
         "--weights", "none", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown model 'vgg16'" in result.stderr and "wide_resnet101_2" in result.stderr


def test_every_test_model_tells_photos_apart(build_dir: Path, photos) -> None:
    """Served answers are compared with the reference to 1e-4: that means something only if a
    model's answers for different photos differ far more (an untrained deep ResNet could answer
    almost the same for every input)."""
    transform = reference_transforms(STANDARD_IMAGENET)
    pictures = [transform(Image.open(p).convert("RGB")) for p in photos.values()]
    for name in ("resnet18", "resnet50", "flowers"):
        model = torch.jit.load(str(build_dir / f"{name}.pt")).eval()
        with torch.inference_mode():
            probabilities = model(torch.stack(pictures)).softmax(dim=1)
        closest = min(
            (probabilities[a] - probabilities[b]).abs().max().item()
            for a in range(len(pictures))
            for b in range(a + 1, len(pictures))
        )
        assert closest > 1e-3, f"{name}: two photos' answers differ by only {closest:.1e}"
