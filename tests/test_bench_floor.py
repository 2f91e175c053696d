"""The benchmark's empty handler, which measures what TorchServe itself costs per answer: the
handler alone, the archive the benchmark packs it into, and that archive served as ours are."""

from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from resnet_mar.bench import floor_handler
from resnet_mar.bench.archives import FLOOR, Workspace, archive_floor
from resnet_mar.bench.machine import ROLES
from resnet_mar.bench.results import Settings
from resnet_mar.bench.served import Clients

SERVING = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 1}


def test_the_empty_handler_answers_every_request_of_a_batch() -> None:
    assert floor_handler.handle(None, object()) is None  # TorchServe's call when it loads
    answers = floor_handler.handle([{"body": b"jpeg"}] * 3, object())
    assert answers == [floor_handler.ANSWER] * 3
    assert json.loads(floor_handler.ANSWER) == {"floor": 1.0}


def test_the_empty_handler_imports_only_the_standard_library() -> None:
    """TorchServe imports it in its worker, where this package is not installed."""
    tree = ast.parse(Path(floor_handler.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def write_model_config(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({**SERVING, "handler": {"architecture": "resnet18"}}))
    return path


def test_the_floor_archive_has_our_serving_settings_and_no_handler_section(
    tmp_path: Path,
) -> None:
    work = Workspace(tmp_path / "work")
    archive_floor(work, write_model_config(tmp_path / "build" / "model-config.yaml"))
    with zipfile.ZipFile(work.store(FLOOR) / f"{FLOOR}.mar") as mar:
        packed = yaml.safe_load(mar.read("model-config.yaml"))
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        assert packed == SERVING
        assert manifest["model"]["handler"] == "floor_handler.py"
        assert mar.read("floor_handler.py") == Path(floor_handler.__file__).read_bytes()


@pytest.mark.integration
def test_the_floor_served_as_ours_gives_a_cpu_profile(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Through the same server set-up as ours (doors, config.properties, worker environment),
    every request is answered and the point carries each part's CPU per answer. The workspace
    has a short path: the server's unix sockets live in it."""
    work = Workspace(tmp_path_factory.mktemp("floor"))
    archive_floor(work, write_model_config(tmp_path / "build" / "model-config.yaml"))
    settings = Settings(("torchscript",), (16,), duration_s=2.0, warmup_s=0.5, int8_gate=None)

    def no_bound(name: str, fmt: str) -> tuple[float, float]:
        raise AssertionError("the floor is not held to a bound")

    point = Clients(work, [b"\xff\xd8 not decoded"], {}, settings, no_bound).protocol_floor()
    assert point.load.errors == 0 and point.load.requests > 16
    assert point.cpu is not None and list(point.cpu.ms_per_answer) == list(ROLES)
    assert point.cpu.ms_per_answer["frontend"] > 0
