"""The models the tests build, archive and serve: untrained resnet18 and resnet50 (WEIGHTS=none,
seed 0) and ``flowers``, a user's fine-tuned resnet18 checkpoint with its own labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torchvision

from resnet_mar.build import BuildRequest, build_model
from resnet_mar.torchserve import REPO_ROOT

#: The fine-tuned model's classes (two of them repeat a name once lower-cased, on purpose).
CUSTOM_LABELS = ["daisy", "dandelion", "rose", "sunflower", "tulip", "crane", "crane (bird)"]
MODELS = ["resnet18", "resnet50", "flowers"]
#: The archives' version (not the default, so the versioned endpoint is really exercised).
VERSION = "2.1"


def build_served_models(out: Path) -> Path:
    """Build every model of :data:`MODELS` into ``out`` as ``make script`` builds them."""
    for arch in ("resnet18", "resnet50"):
        build_model(BuildRequest(arch, weights="none"), out)
    torch.manual_seed(5)
    checkpoint = out / "flowers_state_dict.pt"
    torch.save(torchvision.models.resnet18(num_classes=len(CUSTOM_LABELS)).state_dict(), checkpoint)
    labels = out / "flowers_labels.json"
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(CUSTOM_LABELS)}))
    build_model(
        BuildRequest("resnet18", weights=str(checkpoint), labels=labels, name="flowers"), out
    )
    return out


def max_response_size() -> int:
    """TorchServe's limit on one answer, as the toolkit's config.properties sets it."""
    lines = (REPO_ROOT / "config.properties").read_text().splitlines()
    (value,) = [line.split("=", 1)[1] for line in lines if line.startswith("max_response_size=")]
    return int(value)


def one_model_server_files(model_store: Path, folder: Path, name: str = "resnet18") -> tuple:
    """What ``python -m resnet_mar serve`` is given in the tests that start their own server: a
    store holding one archive and config.properties on free ports, in ``folder``."""
    from resnet_mar.torchserve import config_with_free_ports

    store = folder / "store"
    store.mkdir()
    shutil.copy(model_store / f"{name}.mar", store)
    config = folder / "config.properties"
    config.write_text(config_with_free_ports((REPO_ROOT / "config.properties").read_text()))
    return store, config
