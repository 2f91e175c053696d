"""make mobile: resnet18 exported to ExecuTorch (XNNPACK), checked against eager on the sample
photos and random images, its program run again here on every photo, and its record (size,
latency beside the TorchScript build's, preprocessing, label map) written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_mar.mobile import MAX_BATCH, pte_forward
from resnet_mar.photos import photo_tensors
from resnet_mar.torchserve import REPO_ROOT
from resnet_mar.weights import STANDARD_IMAGENET, load_weights

pytestmark = pytest.mark.builds


def test_make_mobile_exports_a_checked_program(build_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mobile"
    result = subprocess.run(
        [sys.executable, "-m", "resnet_mar", "mobile", "--models", "resnet18", "--weights",
         "none", "--out", str(out), "--build", str(build_dir)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out}/resnet18.pte" in result.stdout and "top-5 identical" in result.stdout
    record = json.loads((out / "resnet18.json").read_text())
    assert record["parity"]["top5_identical"] is True
    assert record["parity"]["max_abs_diff"] <= record["parity"]["tolerance"]
    assert record["size_bytes"] == (out / "resnet18.pte").stat().st_size > 40e6
    assert record["torchscript_size_bytes"] == (build_dir / "resnet18.pt").stat().st_size
    assert set(record["latency_ms_batch1"]) == {"executorch", "torchscript"}
    assert record["preprocessing"]["crop_size"] == STANDARD_IMAGENET.crop_size
    labels = json.loads((out / "resnet18" / "index_to_name.json").read_text())
    assert len(labels) == 1000

    # The program answers each photo, alone and all together, as the eager model does.
    eager = load_weights("resnet18", "none", seed=0).model.eval()
    forward = pte_forward(out / "resnet18.pte")
    photos = torch.stack(list(photo_tensors(STANDARD_IMAGENET).values()))
    assert len(photos) <= MAX_BATCH
    with torch.inference_mode():
        expected = eager(photos)
        for batch in (photos[:1], photos):
            got = forward(batch)
            assert torch.equal(got.topk(5).indices, eager(batch).topk(5).indices)
        assert (forward(photos) - expected).abs().max() < 1e-3
