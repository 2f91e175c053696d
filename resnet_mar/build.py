"""Build one model's archive inputs: serialized model, label map, model-config and provenance.

Layout written under the build folder (``archive.sh`` packs it, nothing else):

    build/<name>.pt                      the compiled model (``.onnx`` for FORMAT=onnx, ...)
    build/<name>.json                    provenance: weights, preprocessing, parity, versions
    build/<name>/index_to_name.json      the label map shipped in the archive
    build/<name>/model-config.yaml       serving settings (schema: resnet_serving.serving_schema)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
import yaml
from PIL import Image

from resnet_mar.architectures import check_architecture
from resnet_mar.calibration import CalibrationError, calibration_set
from resnet_mar.evaluation import EvaluationError, labelled_images
from resnet_mar.export import EXPORTERS, JIT_MODES, Exporter, ExportError, prepare_for_inference
from resnet_mar.labels import write_label_map
from resnet_mar.parity import Forward, ParityError, ParityReport, check_parity, parity_inputs
from resnet_mar.photos import photo_tensors
from resnet_mar.quantization import (
    MAX_TOP1_ACCURACY_DROP,
    MAX_TOP1_PROBABILITY_ERROR,
    MIN_TOP1_AGREEMENT,
    TRAINED_CONFIDENCE,
    QualityError,
    calibrate_confidence,
    check_labelled_quality,
    check_quality,
    estimate_batchnorm,
)
from resnet_mar.weights import LoadedWeights, load_weights, reference_transforms, sha256_of
from resnet_mar.worker_environment import WORKER_ENVIRONMENT
from resnet_serving.serving_schema import HandlerSettings, ModelConfig, Preprocessing, SchemaError


@dataclass(frozen=True)
class BuildRequest:
    architecture: str
    weights: str = "DEFAULT"
    labels: Path | None = None
    name: str | None = None
    model_format: str = "torchscript"
    #: FORMAT=torchscript only: ``torch.jit.script`` or ``torch.jit.trace`` (export.JIT_MODES).
    jit: str = "script"
    seed: int = 0
    #: None: the serving schema's default (full decoding).
    jpeg_draft_factor: int | None = None
    #: FORMAT=int8 only: a folder of calibration images (None: the packaged photos), and the
    #: quality gate's thresholds (resnet_mar/quantization.py).
    calibration: Path | None = None
    int8_min_agreement: float = MIN_TOP1_AGREEMENT
    int8_max_error: float = MAX_TOP1_PROBABILITY_ERROR
    #: FORMAT=int8 only: labelled images (make eval's DATA); the gate is then top-1 accuracy
    #: on them, within ``int8_max_drop`` of FP32's, instead of agreement on held-aside photos.
    int8_data: Path | None = None
    int8_max_drop: float = MAX_TOP1_ACCURACY_DROP

    @property
    def model_name(self) -> str:
        return self.name or self.architecture


@dataclass(frozen=True)
class BuildResult:
    name: str
    model_file: Path
    provenance_file: Path
    archive_dir: Path
    provenance: dict[str, Any]


class BuildError(ValueError):
    """Raised for a build request that cannot be honoured (bad format, bad name)."""


#: The photos (resnet_mar/photos.py) ``JIT=trace`` runs the model on: two, so that no operation
#: is recorded for a batch of one only; the parity check then runs other batch sizes.
TRACE_EXAMPLE = ("grace_hopper", "chelsea")


def model_config(request: BuildRequest, preprocessing: Preprocessing) -> ModelConfig:
    """The archive's serving settings: the schema's defaults, plus what this build decides."""
    extra = {}
    if request.jpeg_draft_factor is not None:
        extra["jpeg_draft_factor"] = request.jpeg_draft_factor
    try:
        handler = HandlerSettings(
            architecture=request.architecture,
            model_format=request.model_format,
            preprocessing=preprocessing,
            worker_environment=dict(WORKER_ENVIRONMENT),
            **extra,
        )
    except SchemaError as err:
        raise BuildError(str(err)) from None
    return ModelConfig(handler=handler)


def check_request(request: BuildRequest) -> None:
    """Refuse what no build can honour, before loading any weights."""
    if request.model_format not in EXPORTERS:
        raise BuildError(f"unknown FORMAT {request.model_format!r}; valid: {', '.join(EXPORTERS)}")
    if request.jit not in JIT_MODES:
        raise BuildError(f"unknown JIT {request.jit!r}; valid: {', '.join(JIT_MODES)}")
    if request.jit == "trace" and request.model_format != "torchscript":
        raise BuildError(
            f"JIT=trace applies to FORMAT=torchscript only; FORMAT={request.model_format} "
            "exports through torch.export, which has no JIT choice: drop JIT=trace"
        )
    name = request.model_name
    if not name.replace("_", "").replace("-", "").isalnum():
        raise BuildError(f"model name {name!r} may hold only letters, digits, '_' and '-'")
    if request.calibration is not None and request.model_format != "int8":
        raise BuildError("CALIBRATION goes with FORMAT=int8 (the only format it calibrates)")
    if request.int8_data is not None and request.model_format != "int8":
        raise BuildError("a labelled gate (DATA with FORMAT=int8) applies to FORMAT=int8 only")
    for threshold in (request.int8_min_agreement, request.int8_max_error, request.int8_max_drop):
        if not 0 <= threshold <= 1:
            raise BuildError(
                f"INT8_MIN_AGREEMENT, INT8_MAX_ERROR and INT8_MAX_DROP are in 0..1, not {threshold}"
            )


def exporter_for(request: BuildRequest, photos: dict[str, torch.Tensor]) -> Exporter:
    """The format's exporter; for TorchScript, with the JIT asked for and its example batch."""
    exporter = EXPORTERS[request.model_format][1]
    if request.model_format != "torchscript":
        return exporter
    example = torch.stack([photos[name] for name in TRACE_EXAMPLE]).contiguous()
    return functools.partial(exporter, jit=request.jit, example=example)


def jit_provenance(request: BuildRequest) -> dict[str, Any] | None:
    """What the provenance records of the JIT: which one, and the trace's example input."""
    if request.model_format != "torchscript":
        return None
    if request.jit == "trace":
        return {"mode": "trace", "example": [f"photo {name}" for name in TRACE_EXAMPLE]}
    return {"mode": request.jit}


def checked_parity(
    eager: Forward,
    compiled: Forward,
    photos: dict[str, torch.Tensor],
    *,
    model_format: str,
    jit: str,
) -> ParityReport:
    """The parity check (resnet_mar/parity.py) on photos and random images, in the layouts the
    handler feeds ``model_format``; a trace that fails it is told why it may have."""
    crop_size = next(iter(photos.values())).shape[-1]
    channels_last = model_format == "torchscript"  # as the handler's batch_input (TorchScript only)
    try:
        return check_parity(eager, compiled, parity_inputs(photos, crop_size, channels_last))
    except ParityError as err:
        if jit != "trace":
            raise
        raise ParityError(
            f"{err}. JIT=trace recorded one run of the model, on {' and '.join(TRACE_EXAMPLE)}: "
            "a model whose forward branches on its input's values keeps only the branches that "
            "run took. Build it with JIT=script"
        ) from None


def compile_and_check(
    request: BuildRequest, loaded: LoadedWeights, model_file: Path
) -> dict[str, Any]:
    """Write ``model_file`` in the requested format and check it against the eager model: the
    same top-5 and close logits on photos and random images (``parity``), or for int8, the
    quality gate on photos held aside from calibration (``quality``). Returns what the
    provenance records of the checks."""
    if request.model_format != "int8":
        eager = prepare_for_inference(loaded.model)
        photos = photo_tensors(loaded.preprocessing)  # missing packages stop the build first
        compiled = exporter_for(request, photos)(eager, model_file, loaded.preprocessing)
        parity = checked_parity(
            eager, compiled, photos, model_format=request.model_format, jit=request.jit
        )
        return {"jit": jit_provenance(request), "parity": dataclasses.asdict(parity)}
    calibration = calibration_set(loaded.preprocessing, request.calibration)
    checks: dict[str, Any] = {
        "calibration": {
            "images": len(calibration.images),
            "photos": calibration.sources,
            "held_aside": calibration.held_aside_sources,
        }
    }
    if not loaded.provenance["trained"]:  # so that the gate can fail (quantization.py)
        estimate_batchnorm(loaded.model, calibration.images)
        scale = calibrate_confidence(loaded.model, calibration.images)
        checks["calibration"]["untrained"] = (
            "BatchNorm statistics estimated on the calibration images; last layer scaled by "
            f"{scale:.2f} to a mean top-1 probability of {TRAINED_CONFIDENCE}"
        )
    eager = prepare_for_inference(loaded.model)
    exporter = EXPORTERS["int8"][1]
    compiled = exporter(eager, model_file, loaded.preprocessing, images=calibration.images)
    if request.int8_data is not None:
        labelled = check_labelled_quality(
            eager,
            compiled,
            labelled_batches(request.int8_data, loaded),
            loaded.categories,
            max_drop=request.int8_max_drop,
        )
        return {**checks, "labelled_quality": {"data": str(request.int8_data),
                                               **dataclasses.asdict(labelled)}}  # fmt: skip
    quality = check_quality(
        eager,
        compiled,
        calibration.held_aside,
        min_top1_agreement=request.int8_min_agreement,
        max_top1_probability_error=request.int8_max_error,
    )
    return {**checks, "quality": dataclasses.asdict(quality)}


def labelled_batches(data: Path, loaded: LoadedWeights, size: int = 32) -> Iterator[tuple]:
    """``data``'s images as model inputs with their label names, a batch at a time (a labelled
    set may not fit in memory), prepared by the weights entry's own transforms."""
    try:
        images = labelled_images(data, loaded.categories)
    except EvaluationError as err:
        raise BuildError(str(err)) from None
    transform = reference_transforms(loaded.preprocessing)
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        tensors = [transform(Image.open(item.path).convert("RGB")) for item in chunk]
        yield torch.stack(tensors), [item.label for item in chunk]


def build_model(request: BuildRequest, out_dir: Path) -> BuildResult:
    """Load weights, compile, check parity (or int8 quality), and write the archive inputs for
    one model."""
    arch = check_architecture(request.architecture)
    check_request(request)
    name = request.model_name
    loaded = load_weights(arch, request.weights, labels=request.labels, seed=request.seed)
    config = model_config(request, loaded.preprocessing)  # a bad setting stops the build here
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = out_dir / f"{name}{EXPORTERS[request.model_format][0]}"
    try:
        checks = compile_and_check(request, loaded, model_file)
    except (ExportError, CalibrationError, QualityError) as err:
        raise BuildError(str(err)) from None

    archive_dir = out_dir / name
    write_label_map(loaded.categories, archive_dir / "index_to_name.json")
    (archive_dir / "model-config.yaml").write_text(
        yaml.safe_dump(config.to_dict(), sort_keys=False)
    )

    provenance = {
        "name": name,
        "architecture": arch,
        "format": request.model_format,
        "weights": {"requested": request.weights, **loaded.provenance},
        "num_classes": len(loaded.categories),
        "preprocessing": dataclasses.asdict(loaded.preprocessing),
        **checks,
        "model_file": model_file.name,
        "sha256": sha256_of(model_file),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
    }
    provenance_file = out_dir / f"{name}.json"
    provenance_file.write_text(json.dumps(provenance, indent=2) + "\n")
    return BuildResult(name, model_file, provenance_file, archive_dir, provenance)
