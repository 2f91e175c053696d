"""Shared fixtures: real photos and untrained builds of real ResNets.

Everything here is offline and seeded: tests use WEIGHTS=none (no machine here can download
pretrained weights) and compare probabilities, never labels alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet_handler import ResNetClassifierHandler
from resnet_mar.torchserve import REPO_ROOT, RunningServer, private_server
from tests.fake_context import FakeContext, initialized_handler, unpacked_model_dir
from tests.photos import PHOTOS
from tests.reference import load_archive_reference
from tests.served_models import MODELS, VERSION, build_served_models
from tests.server_probes import worker_pids

#: Fixtures that build models or start TorchServe: ``--fast`` (make check) leaves their tests out.
HEAVY_FIXTURES = {"build_dir", "model_store", "server", "references", "handler_and_context"}
#: Markers of tests that do either themselves.
HEAVY_MARKERS = ("integration", "slow", "container", "builds")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="only the tests that need neither TorchServe nor a model build (make check)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --fast, deselect (and count as deselected, never skipped) the heavy tests."""
    if not config.getoption("--fast"):
        return
    heavy = [
        item
        for item in items
        if any(item.get_closest_marker(marker) for marker in HEAVY_MARKERS)
        or HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if item not in heavy]


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    missing = [str(p) for p in PHOTOS.values() if not p.is_file()]
    assert not missing, f"test photos missing (is scikit-image/matplotlib installed?): {missing}"
    return PHOTOS


@pytest.fixture(scope="session")
def photo_bytes(photos: dict[str, Path]) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in photos.items()}


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served models (tests/served_models.py), built once per session."""
    return build_served_models(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def model_store(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served models packed by archive.sh, as make archive packs them."""
    store = tmp_path_factory.mktemp("model_store")
    result = subprocess.run(
        [str(REPO_ROOT / "archive.sh"), "-b", str(build_dir), "-s", str(store), "-v", VERSION,
         *MODELS],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"archive.sh failed:\n{result.stdout}\n{result.stderr}"
    for name in MODELS:
        assert f"archived {name} -> {store}/{name}.mar" in result.stdout
    return store


@pytest.fixture(scope="session")
def server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One TorchServe for the integration suites, run as make serve runs it (own network
    namespace, forwarded doors, management on an owner-only socket); always stopped."""
    workdir = tmp_path_factory.mktemp("torchserve")
    with private_server(model_store, MODELS, workdir=workdir, timeout_s=300) as running:
        started = worker_pids(running)
        yield running
        # Whatever order the suites ran in: every odd, broken, oversized and concurrent request
        # they sent left the workers that were started with the server (an error at teardown).
        assert worker_pids(running) == started, "a worker died or restarted during the suite"


@pytest.fixture(scope="session")
def references(model_store: Path) -> dict[str, tuple]:
    """Model and label map of each archive, read back from the .mar itself."""
    return {
        name: load_archive_reference(model_store / f"{name}.mar", f"{name}.pt") for name in MODELS
    }


@pytest.fixture(scope="module")
def handler_and_context(
    build_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ResNetClassifierHandler, FakeContext]:
    """The resnet18 archive's handler as a worker holds it after loading (no envelope), and
    its context; one per test module."""
    model_dir = unpacked_model_dir(build_dir, "resnet18", tmp_path_factory.mktemp("resnet18"))
    return initialized_handler(model_dir, "resnet18.pt")
