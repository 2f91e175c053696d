"""A stand-in for TorchServe's ``Context``: just what the handler touches, so each handler stage
runs and is checked without a server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from resnet_handler import ResNetClassifierHandler


class FakeMetrics:
    """Records what the handler reports through TorchServe's metrics API."""

    def __init__(self) -> None:
        self.counters: list[tuple[str, float, dict[str, str]]] = []
        self.histograms: list[tuple[str, float, dict[str, str]]] = []

    def add_counter(self, name: str, value: float, idx: Any, dimensions: list) -> None:
        self.counters.append((name, value, {d.name: d.value for d in dimensions}))

    def add_metric(
        self, name: str, value: float, unit: str, idx: Any, dimensions: list, metric_type: Any
    ) -> None:
        assert metric_type.name == "HISTOGRAM", metric_type
        self.histograms.append((name, value, {d.name: d.value for d in dimensions}))


class FakeContext:
    def __init__(self, model_dir: Path, serialized_file: str, model_name: str = "") -> None:
        self.model_name = model_name or Path(serialized_file).stem
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"serializedFile": serialized_file, "modelVersion": "1.0"}}
        self.metrics = FakeMetrics()
        self.model_yaml_config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
        self.headers: list[dict[str, Any]] = []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.response_headers: dict[int, dict[str, str]] = {}

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self.headers[idx] if idx < len(self.headers) else {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value


def unpacked_model_dir(build_dir: Path, name: str, target: Path) -> Path:
    """What TorchServe unpacks an archive into: model file, label map, config side by side."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_dir / f"{name}.pt", target / f"{name}.pt")
    for member in ("index_to_name.json", "model-config.yaml"):
        shutil.copy(build_dir / name / member, target / member)
    return target


def unpacked_build(model_file: Path, archive_dir: Path, target: Path) -> Path:
    """A build's model file and archive members side by side, as TorchServe unpacks them."""
    for member in (model_file, *archive_dir.iterdir()):
        shutil.copy(member, target / member.name)
    return target


def initialized_handler(
    model_dir: Path, serialized_file: str
) -> tuple[ResNetClassifierHandler, FakeContext]:
    """The handler as a worker holds it after loading ``model_dir``, and its context."""
    context = FakeContext(model_dir, serialized_file)
    handler = ResNetClassifierHandler()
    handler.initialize(context)
    return handler, context
