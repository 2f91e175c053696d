"""Shared fixtures: real photos and untrained builds of real ResNets.

Everything here is offline and seeded: tests use WEIGHTS=none (no machine here can download
pretrained weights) and compare probabilities, never labels alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.photos import PHOTOS
from tests.served_models import build_served_models


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
