"""The in-process side of the benchmark on a tiny TorchScript model and the real photos: the
limit's figures (on all cores and on one), the preprocessing cost through the handler's own
stages (the benchmark broke once when their API changed, untested), the FP32 matmul peak and
the GFLOP of the real architectures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from resnet_mar.bench.limit import (
    BATCH_SIZES,
    at_best_batch,
    fp32_matmul_peak,
    gflop_per_image,
    in_process_limit,
    preprocessed_photos,
    preprocessing_cost,
)
from resnet_mar.bench.setups import photo_payloads, size_test_payloads
from resnet_mar.build import BuildRequest, model_config
from resnet_mar.weights import STANDARD_IMAGENET


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return photo_payloads()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen TorchScript classifier small enough to time in milliseconds."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 7, stride=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.jit.save(torch.jit.freeze(torch.jit.script(model)), str(path))
    return path


def test_photos_as_the_model_sees_them(payloads: list[bytes]) -> None:
    assert len(payloads) == 5 and all(p[:2] == b"\xff\xd8" for p in payloads)  # all JPEG
    assert preprocessed_photos(payloads).shape == (5, 3, 224, 224)


def test_size_test_pair() -> None:
    sizes = size_test_payloads()
    assert (sizes["small"].pixels, sizes["large"].pixels) == ("640x480", "4000x3000")
    assert len(sizes["large"].data) > 5 * len(sizes["small"].data)


def test_in_process_limit_is_the_best_of_every_batch_and_layout(
    tiny_model: Path, payloads: list[bytes]
) -> None:
    photos = preprocessed_photos(payloads)
    limit = in_process_limit(tiny_model, "torchscript", photos, min_time_s=0.01, one_thread_s=0.01)
    assert set(limit.img_per_s) == {"contiguous", "channels_last"}  # TorchScript: both layouts
    assert all(list(speeds) == list(BATCH_SIZES) for speeds in limit.img_per_s.values())
    best = max(v for speeds in limit.img_per_s.values() for v in speeds.values())
    assert limit.limit_img_per_s == best
    assert limit.img_per_s[limit.best_layout][limit.best_batch] == best
    assert limit.batch1_latency_ms == min(limit.batch1_ms.values()) > 0
    assert limit.file == "tiny.pt" and limit.other.other_cores >= 0
    assert limit.one_thread_img_per_s > 0


def test_the_limit_again_puts_torchs_threads_back(tiny_model: Path, payloads: list[bytes]) -> None:
    photos = preprocessed_photos(payloads)
    threads = torch.get_num_threads()
    for on in (None, 1):  # every core, as measured again after serving; one thread
        speed = at_best_batch(tiny_model, "torchscript", photos, 4, "channels_last", on, 0.01)
        assert speed > 0 and torch.get_num_threads() == threads


def test_fp32_matmul_peak_on_every_core() -> None:
    threads = torch.get_num_threads()
    peak = fp32_matmul_peak(size=256, calls=2)
    assert peak.gflop_per_s > 0 and peak.other.other_cores >= 0
    assert (peak.size, peak.calls, peak.threads) == (256, 2, os.cpu_count())
    assert torch.get_num_threads() == threads  # put back


@pytest.mark.parametrize(("architecture", "gflop"), [("resnet18", 3.628), ("resnet50", 8.178)])
def test_gflop_per_image_of_the_architectures(architecture: str, gflop: float) -> None:
    """A multiply-add counts 2: torchvision's published 1.81 and 4.09 GMAC for a 224 crop."""
    assert gflop_per_image(architecture, torch.zeros(3, 224, 224)) == gflop


def test_preprocessing_cost_runs_the_handlers_stages(tmp_path: Path, payloads: list[bytes]) -> None:
    config = tmp_path / "model-config.yaml"
    written = model_config(BuildRequest("resnet18", weights="none"), STANDARD_IMAGENET)
    config.write_text(yaml.safe_dump(written.to_dict()))
    threads = torch.get_num_threads()
    cost = preprocessing_cost(config, payloads, min_time_s=0.05)
    assert 0 < cost < 1000  # ms of CPU per photo
    assert torch.get_num_threads() == threads  # put back
