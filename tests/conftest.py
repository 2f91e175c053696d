"""Shared fixtures: real photos, the handler modules, and untrained builds of real ResNets.

Everything here is offline and seeded: tests use WEIGHTS=none (no machine here can download
pretrained weights) and compare probabilities, never labels alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import pytest
import skimage.data

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS = REPO_ROOT / "handlers"
# The handler's modules import each other by bare name, as they do inside an archive.
sys.path.insert(0, str(HANDLERS))

SKIMAGE_DATA = Path(skimage.data.__file__).parent
PHOTOS = {
    "chelsea": SKIMAGE_DATA / "chelsea.png",  # cat, 451x300 RGB PNG
    "coffee": SKIMAGE_DATA / "coffee.png",  # 600x400 RGB PNG
    "astronaut": SKIMAGE_DATA / "astronaut.png",  # 512x512 RGB PNG
    "rocket": SKIMAGE_DATA / "rocket.jpg",  # 427x640 JPEG
    "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
}


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    missing = [str(p) for p in PHOTOS.values() if not p.is_file()]
    assert not missing, f"test photos missing (is scikit-image/matplotlib installed?): {missing}"
    return PHOTOS


@pytest.fixture(scope="session")
def photo_bytes(photos: dict[str, Path]) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in photos.items()}


#: A user's fine-tuned model: its own classes, its own served name.
CUSTOM_LABELS = ["daisy", "dandelion", "rose", "sunflower", "tulip", "crane", "crane (bird)"]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained resnet18 and resnet50 plus a custom-label checkpoint, built as `make script`
    builds them (served together, each with every core)."""
    import json

    import torch
    import torchvision

    from resnet_mar.build import BuildRequest, build_model

    out = tmp_path_factory.mktemp("build")
    for arch in ("resnet18", "resnet50"):
        build_model(BuildRequest(arch, weights="none"), out)
    torch.manual_seed(5)
    checkpoint = out / "flowers_state_dict.pt"
    torch.save(torchvision.models.resnet18(num_classes=len(CUSTOM_LABELS)).state_dict(), checkpoint)
    labels = out / "flowers_labels.json"
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(CUSTOM_LABELS)}))
    build_model(
        BuildRequest(
            "resnet18",
            weights=str(checkpoint),
            labels=labels,
            name="flowers",
        ),
        out,
    )
    return out
