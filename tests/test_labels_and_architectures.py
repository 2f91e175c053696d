"""The supported-architecture list and label maps: refused early, at build time."""

from __future__ import annotations

import json

import pytest
import torchvision

from resnet_mar.architectures import SUPPORTED_ARCHITECTURES, check_architecture
from resnet_mar.labels import (
    LabelMapError,
    imagenet_categories,
    label_map_json,
    read_label_map,
    torchvision_imagenet_categories,
    write_label_map,
)
from resnet_mar.torchserve import REPO_ROOT


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        check_architecture("resnet19")
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(err.value)


def test_the_whole_resnet_family_is_supported() -> None:
    """Every ResNet, ResNeXt and Wide ResNet classifier torchvision knows, and nothing else."""
    family = {
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "resnext", "wide_resnet"))
    }
    assert len(family) >= 10
    assert set(SUPPORTED_ARCHITECTURES) == family


def test_committed_index_to_name_is_what_make_labels_writes() -> None:
    committed = (REPO_ROOT / "index_to_name.json").read_text()
    assert committed == label_map_json(torchvision_imagenet_categories())
    assert imagenet_categories() == torchvision_imagenet_categories()  # what untrained builds ship
    mapping = json.loads(committed)
    assert len(mapping) == 1000
    assert mapping["0"] == "tench" and mapping["999"] == "toilet tissue"


def test_label_map_round_trip_and_both_value_styles(tmp_path) -> None:
    path = write_label_map(["cat", "dog"], tmp_path / "labels.json")
    assert read_label_map(path) == ["cat", "dog"]
    path.write_text(json.dumps({"1": ["n02", "dog"], "0": ["n01", "cat"]}))
    assert read_label_map(path) == ["cat", "dog"]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('{"0": "cat", "2": "dog"}', "without gaps"),
        ('{"a": "cat"}', "not a class index"),
        ('{"0": 5}', "has no name"),
        ("[]", "non-empty object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_label_maps_say_what_is_wrong(tmp_path, content: str, complaint: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(LabelMapError, match=complaint):
        read_label_map(path)


def test_missing_label_map(tmp_path) -> None:
    with pytest.raises(LabelMapError, match="does not exist"):
        read_label_map(tmp_path / "nope.json")
