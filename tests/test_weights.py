"""Weights loading: torchvision's weights API through a pre-filled hub cache (offline), seeded
untrained weights, and users' checkpoints with their own label maps."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights, ResNet50_Weights

from resnet_mar.weights import STANDARD_IMAGENET, WeightsError, load_weights


def _same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_weights_entry_is_read_from_the_hub_cache(torch_home: Path) -> None:
    """The real torchvision path: DEFAULT resolves to IMAGENET1K_V2 for resnet50, whose file
    name, categories and preprocessing (resize 232) all come from the weights entry."""
    torch.manual_seed(7)
    stand_in = torchvision.models.resnet50()
    entry = ResNet50_Weights.IMAGENET1K_V2
    cache_file = torch_home / "hub" / "checkpoints" / Path(entry.url).name
    cache_file.parent.mkdir(parents=True)
    torch.save(stand_in.state_dict(), cache_file)

    loaded = load_weights("resnet50", "DEFAULT")

    assert _same_parameters(loaded.model, stand_in)
    assert loaded.categories == entry.meta["categories"]
    transforms = entry.transforms()
    assert loaded.preprocessing.mean == tuple(transforms.mean)
    assert loaded.preprocessing.std == tuple(transforms.std)
    assert (loaded.preprocessing.resize_size, loaded.preprocessing.crop_size) == (232, 224)
    assert loaded.provenance["entry"] == "ResNet50_Weights.IMAGENET1K_V2"
    assert loaded.provenance["cache_file"] == str(cache_file)


def test_named_weights_entry_and_its_own_preprocessing(torch_home: Path) -> None:
    entry = ResNet50_Weights.IMAGENET1K_V1
    cache_file = torch_home / "hub" / "checkpoints" / Path(entry.url).name
    cache_file.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cache_file)
    loaded = load_weights("resnet50", "IMAGENET1K_V1")
    assert loaded.preprocessing.resize_size == 256
    assert loaded.provenance["entry"] == "ResNet50_Weights.IMAGENET1K_V1"


def test_missing_cache_file_names_it_and_the_offline_way_out(torch_home, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to the download host")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    expected = torch_home / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(WeightsError) as err:
        load_weights("resnet18", "DEFAULT")
    assert str(expected) in str(err.value)
    assert "WEIGHTS=none" in str(err.value)


def test_unknown_weights_entry_lists_valid_ones() -> None:
    with pytest.raises(WeightsError, match="IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        load_weights("resnet50", "IMAGENET1K_V9")


def test_untrained_weights_are_seeded_and_recorded() -> None:
    first, again = (
        load_weights("resnet18", "none", seed=3),
        load_weights("resnet18", "none", seed=3),
    )
    other = load_weights("resnet18", "none", seed=4)
    assert _same_parameters(first.model, again.model)
    assert not _same_parameters(first.model, other.model)
    assert first.provenance == {"source": "untrained", "trained": False, "seed": 3}
    assert first.preprocessing == STANDARD_IMAGENET
    assert (STANDARD_IMAGENET.resize_size, STANDARD_IMAGENET.crop_size) == (256, 224)


def _write_labels(path: Path, names: list[str]) -> Path:
    path.write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    return path


def test_checkpoint_with_its_own_labels(tmp_path: Path) -> None:
    torch.manual_seed(11)
    fine_tuned = torchvision.models.resnet18(num_classes=3)
    checkpoint = tmp_path / "flowers.pt"
    # Training scripts often save a wrapper and a DataParallel prefix; both are accepted.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in fine_tuned.state_dict().items()}}
    torch.save(wrapped, checkpoint)
    labels = _write_labels(tmp_path / "labels.json", ["daisy", "rose", "tulip"])

    loaded = load_weights("resnet18", str(checkpoint), labels=labels)

    assert loaded.categories == ["daisy", "rose", "tulip"]
    assert _same_parameters(loaded.model, fine_tuned)
    assert loaded.provenance["source"] == "checkpoint"
    assert len(loaded.provenance["sha256"]) == 64


def test_checkpoint_whose_classes_disagree_with_the_labels(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), checkpoint)
    labels = _write_labels(tmp_path / "labels.json", ["a", "b", "c", "d"])
    with pytest.raises(WeightsError, match=r"shape mismatches fc\.weight: checkpoint \(3, 512\)"):
        load_weights("resnet18", str(checkpoint), labels=labels)


def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet34(num_classes=2).state_dict(), checkpoint)
    labels = _write_labels(tmp_path / "labels.json", ["a", "b"])
    with pytest.raises(WeightsError, match=r"unexpected keys layer1\.2"):
        load_weights("resnet18", str(checkpoint), labels=labels)


def test_checkpoint_missing_keys(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=2).state_dict()
    del state["layer4.1.bn2.weight"]
    checkpoint = tmp_path / "model.pt"
    torch.save(state, checkpoint)
    labels = _write_labels(tmp_path / "labels.json", ["a", "b"])
    with pytest.raises(WeightsError, match=r"missing keys layer4\.1\.bn2\.weight"):
        load_weights("resnet18", str(checkpoint), labels=labels)


def test_checkpoint_needs_labels(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(torchvision.models.resnet18().state_dict(), checkpoint)
    with pytest.raises(WeightsError, match="LABELS="):
        load_weights("resnet18", str(checkpoint))
