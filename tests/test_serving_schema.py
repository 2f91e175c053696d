"""The serving schema: what the build writes is exactly what the handler reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from resnet_mar.build import BuildRequest, model_config
from resnet_mar.weights import STANDARD_IMAGENET
from resnet_serving.serving_schema import HandlerSettings, ModelConfig, SchemaError


def written(request: BuildRequest) -> dict:
    """model-config.yaml as the build writes it, parsed back as TorchServe parses it."""
    return yaml.safe_load(yaml.safe_dump(model_config(request, STANDARD_IMAGENET).to_dict()))


def test_every_key_written_is_read_back_to_the_same_settings() -> None:
    request = BuildRequest("resnet50", weights="none", model_format="onnx", jpeg_draft_factor=2)
    config = model_config(request, STANDARD_IMAGENET)
    assert ModelConfig.from_dict(written(request)) == config
    assert config.handler.jpeg_draft_factor == 2 and config.handler.model_format == "onnx"


def test_the_archives_config_file_reads_back(build_dir: Path) -> None:
    data = yaml.safe_load((build_dir / "resnet18" / "model-config.yaml").read_text())
    config = ModelConfig.from_dict(data)
    assert config.handler.architecture == "resnet18"
    assert data["batchSize"] == config.batch_size  # TorchServe's own names at the top level


def test_keys_are_torchserves_at_the_top_and_the_fields_below() -> None:
    data = written(BuildRequest("resnet18", weights="none"))
    assert {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "handler"} <= set(data)
    assert set(data["handler"]) == {f.name for f in dataclasses.fields(HandlerSettings)}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["handler"].update(format=d["handler"].pop("model_format")), "unknown keys"),
        (lambda d: d["handler"].pop("topk"), r"missing keys \['topk'\]"),
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d["handler"].update(topk="5"), "topk must be int"),
        (lambda d: d["handler"].update(topk=True), "topk must be int"),
        (lambda d: d["handler"].update(topk=0), "topk must be >= 1"),
        (lambda d: d["handler"].update(intra_op_threads="all"), "intra_op_threads must be"),
        (lambda d: d["handler"].update(model_format="pickle"), "model_format must be one of"),
        (lambda d: d["handler"]["preprocessing"].update(crop_size=300), "crop_size <= resize"),
        (lambda d: d["handler"]["preprocessing"].update(mean=[0.5]), "mean and std need 3"),
        (lambda d: d.update(maxWorkers=0), "maxWorkers must be >= 1"),
        (lambda d: d.update(handler=[]), "handler must be a mapping"),
        (lambda d: d["handler"].update(ig_steps=0), "ig_steps must be >= 1"),
        (lambda d: d["handler"].update(ig_internal_batch=0), "ig_internal_batch must be >= 1"),
        (lambda d: d["handler"].pop("ig_steps"), r"missing keys \['ig_steps'\]"),
    ],
    ids=[
        "renamed-key",
        "missing-key",
        "extra-key",
        "string-number",
        "bool-number",
        "zero-topk",
        "bad-threads",
        "bad-format",
        "crop-over-resize",
        "short-mean",
        "no-workers",
        "not-a-mapping",
        "zero-ig-steps",
        "zero-ig-batch",
        "missing-ig-steps",
    ],
)
def test_a_config_that_breaks_the_schema_is_refused_with_its_key(change, complaint) -> None:
    data = written(BuildRequest("resnet18", weights="none"))
    change(data)
    with pytest.raises(SchemaError, match=complaint):
        ModelConfig.from_dict(data)


def test_threads_are_a_number_or_auto() -> None:
    data = written(BuildRequest("resnet18", weights="none"))
    assert data["handler"]["intra_op_threads"] == "auto"
    data["handler"]["intra_op_threads"] = 3
    assert ModelConfig.from_dict(data).handler.intra_op_threads == 3
