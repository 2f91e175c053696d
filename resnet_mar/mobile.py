"""The mobile row: each model exported to ExecuTorch (a ``.pte`` program, its layers delegated to
XNNPACK), the successor of PyTorch Mobile, for phones and edge boxes that run no Python.

A ``.pte`` is checked like every served format: against the eager model on the sample photos
and random images (parity.py), at the batch sizes it accepts (1 to 8). Beside it go the label
map and the preprocessing the app must reproduce (a ``.pte`` takes the normalised 3 x crop x
crop tensor), and a record of its size and in-process latency next to the TorchScript file's.

ExecuTorch 1.5.1 works with the pinned torch 2.14 (no torch requirement of its own; its Python
runtime links the installed libtorch, so a torch upgrade needs this check again).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from resnet_mar.architectures import check_architecture
from resnet_mar.export import prepare_for_inference
from resnet_mar.labels import write_label_map
from resnet_mar.parity import Forward, check_parity, parity_inputs
from resnet_mar.photos import photo_tensors
from resnet_mar.weights import load_weights

#: A .pte plans its memory for the largest batch it accepts; an app classifies a photo or a
#: few at a time. (Beyond 15, torch 2.14's export narrows the range back to 15.)
MAX_BATCH = 8
LATENCY_RUNS = 20


class MobileError(RuntimeError):
    """ExecuTorch missing or an export that failed; says what to do."""


def export_pte(eager: torch.nn.Module, out: Path, crop_size: int) -> Path:
    """``eager`` as an ExecuTorch program taking batches of 1 to :data:`MAX_BATCH`."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as err:
        raise MobileError(
            f"ExecuTorch is not installed ({err}): make setup installs it (extra 'mobile')"
        ) from None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = (torch.randn(2, 3, crop_size, crop_size),)
    program = torch.export.export(eager, example, dynamic_shapes=({0: batch},))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    out.write_bytes(lowered.to_executorch().buffer)
    return out


def pte_forward(path: Path) -> Forward:
    """The program at ``path`` as a function from an image batch to logits."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return method.execute([batch.contiguous()])[0]

    return forward


def median_latency_ms(forward: Forward, crop_size: int, runs: int = LATENCY_RUNS) -> float:
    """One image at a time, as an app classifies a photo: median of ``runs`` after warm-up."""
    image = torch.randn(1, 3, crop_size, crop_size)
    timings = []
    with torch.inference_mode():
        for run in range(runs + 3):
            started = time.perf_counter()
            forward(image)
            if run >= 3:
                timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 2)


def build_mobile(
    architecture: str,
    weights: str,
    out_dir: Path,
    *,
    name: str | None = None,
    labels: Path | None = None,
    seed: int = 0,
    torchscript: Path | None = None,
) -> dict[str, Any]:
    """Export one model to ``out_dir/<name>.pte``, check it, and write ``<name>.json`` (parity,
    sizes, latencies, preprocessing) and ``<name>/index_to_name.json``; returns the record.
    ``torchscript``: the build's TorchScript file of the same model, for the comparison."""
    arch = check_architecture(architecture)
    name = name or arch
    loaded = load_weights(arch, weights, labels=labels, seed=seed)
    eager = prepare_for_inference(loaded.model)
    crop = loaded.preprocessing.crop_size
    out_dir.mkdir(parents=True, exist_ok=True)
    pte = export_pte(eager, out_dir / f"{name}.pte", crop)
    forward = pte_forward(pte)
    photos = photo_tensors(loaded.preprocessing)
    inputs = [
        item
        for item in parity_inputs(photos, crop, channels_last=False)
        if item.batch.shape[0] <= MAX_BATCH
    ]
    parity = check_parity(eager, forward, inputs)
    write_label_map(loaded.categories, out_dir / name / "index_to_name.json")
    record: dict[str, Any] = {
        "name": name,
        "architecture": arch,
        "weights": {"requested": weights, **loaded.provenance},
        "format": "executorch (XNNPACK)",
        "batch_sizes": [1, MAX_BATCH],
        "input": f"float32 N x 3 x {crop} x {crop}, normalised as preprocessing says",
        "preprocessing": dataclasses.asdict(loaded.preprocessing),
        "parity": dataclasses.asdict(parity),
        "size_bytes": pte.stat().st_size,
        "latency_ms_batch1": {"executorch": median_latency_ms(forward, crop)},
        "versions": {"torch": torch.__version__, "executorch": _executorch_version()},
    }
    if torchscript is not None and torchscript.is_file():
        scripted = torch.jit.load(str(torchscript), map_location="cpu").eval()
        record["torchscript_size_bytes"] = torchscript.stat().st_size
        record["latency_ms_batch1"]["torchscript"] = median_latency_ms(scripted, crop)
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")
