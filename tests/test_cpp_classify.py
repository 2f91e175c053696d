"""The TorchScript file as a consumer without Python reads it: its preprocessing travels inside
it (``preprocessing.json``, one of ``torch.jit.save``'s extra files)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from resnet_mar.export import PREPROCESSING_FILE


def test_model_file_carries_its_preprocessing(build_dir: Path) -> None:
    extra_files = {PREPROCESSING_FILE: ""}
    torch.jit.load(str(build_dir / "resnet18.pt"), _extra_files=extra_files)
    provenance = json.loads((build_dir / "resnet18.json").read_text())
    assert json.loads(extra_files[PREPROCESSING_FILE]) == provenance["preprocessing"]
