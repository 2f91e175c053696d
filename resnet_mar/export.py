"""Turn an eager torchvision model into the serialized file an archive serves.

Each format is one exporter function in :data:`EXPORTERS`; every exporter's output is loaded back
and checked against the eager model (:mod:`resnet_mar.parity`) before the build goes on.

The handler loads the same files with its own ``resnet_serving.model_runtimes`` (an archive ships
handlers/ alone, not this package); the tests check that both agree with the eager model.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from resnet_mar.parity import Forward
from resnet_serving.serving_schema import Preprocessing

#: torch 2.14 marks TorchScript deprecated (in favour of torch.export); it still works, and its
#: four warnings per model would bury the build's own progress lines.
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"

Exporter = Callable[..., Forward]


class ExportError(RuntimeError):
    """A serialized model this machine cannot produce or run; says why."""


#: The extra file a TorchScript model carries its preprocessing in (``torch.jit.save``'s
#: ``_extra_files``), so a consumer without Python (``cpp/classify.cpp``, through
#: ``torch::jit::load``) prepares images as the weights expect, from the model file alone.
PREPROCESSING_FILE = "preprocessing.json"

#: Batch sizes the torch.export-based formats are exported for (1 to this); the server batches 8.
MAX_BATCH = 64


def prepare_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (batch norm uses running stats) and no gradients: what serving needs."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


#: How ``torch.jit`` turns the eager model into TorchScript (``JIT``, FORMAT=torchscript only).
JIT_MODES = ("script", "trace")


def jit_compile(
    model: torch.nn.Module, jit: str, example: torch.Tensor | None
) -> torch.jit.ScriptModule:
    """``script`` compiles the model's Python code, control flow included; ``trace`` runs it once
    on ``example`` and records the operations that ran, so a branch on the input's values is
    frozen to the way the example went (the parity check on other photos catches that). Tracing
    accepts models scripting cannot compile (Python features TorchScript lacks)."""
    if jit == "script":
        return torch.jit.script(model)
    if jit == "trace":
        if example is None:
            raise ValueError("JIT=trace needs an example input to run the model on")
        return torch.jit.trace(model, example)
    raise ValueError(f"unknown JIT {jit!r}; valid: {', '.join(JIT_MODES)}")


def export_torchscript(
    model: torch.nn.Module,
    path: Path,
    preprocessing: Preprocessing,
    *,
    jit: str = "script",
    example: torch.Tensor | None = None,
) -> Forward:
    """:func:`jit_compile` then freeze: weights become constants and batch norm folds into the
    convolutions. The file also carries the preprocessing as :data:`PREPROCESSING_FILE`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        frozen = torch.jit.freeze(jit_compile(model, jit, example))
        extra_files = {PREPROCESSING_FILE: json.dumps(dataclasses.asdict(preprocessing))}
        torch.jit.save(frozen, str(path), _extra_files=extra_files)
        return torch.jit.load(str(path), map_location="cpu")


def batch_example(crop_size: int) -> tuple[torch.Tensor]:
    """An example input for ``torch.export``: two images, since a batch of 1 would make the
    exporter specialise the batch dimension to 1 instead of keeping it dynamic."""
    return (torch.randn(2, 3, crop_size, crop_size),)


def dynamic_batch() -> tuple[dict[int, torch.export.Dim]]:
    """``dynamic_shapes`` for the single input: any batch of 1 to :data:`MAX_BATCH` images."""
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def export_onnx(model: torch.nn.Module, path: Path, preprocessing: Preprocessing) -> Forward:
    """The torch.export-based ONNX exporter (torch's default; it needs ``onnxscript``), not the
    legacy TorchScript-based one, which torch 2.14 deprecates for removal. Weights go inside the
    one ``.onnx`` file (no external data) because the archive packs a single serialized file."""
    import onnxruntime

    torch.onnx.export(
        model,
        batch_example(preprocessing.crop_size),
        str(path),
        dynamo=True,
        verbose=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=dynamic_batch(),
        external_data=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])

    return forward


def export_aoti(model: torch.nn.Module, path: Path, preprocessing: Preprocessing) -> Forward:
    """``torch.export`` then AOTInductor: the graph becomes C++ compiled here with the machine's
    compiler into a ``.pt2`` package that torch loads without Python-level graph execution.

    The kernels are compiled for this machine's CPU instruction set (AVX-512 where present):
    serve the package on the same kind of machine it was built on."""
    program = torch.export.export(
        model, batch_example(preprocessing.crop_size), dynamic_shapes=dynamic_batch()
    )
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return torch._inductor.aoti_load_package(str(path))


def export_openvino(model: torch.nn.Module, path: Path, preprocessing: Preprocessing) -> Forward:
    """The ONNX export, run by OpenVINO's CPU plugin in FP32 (OpenVINO reads ONNX directly, as
    fast as its own IR, and the archive keeps one file)."""
    export_onnx(model, path, preprocessing)
    return openvino_forward(path)


def export_int8(
    model: torch.nn.Module, path: Path, preprocessing: Preprocessing, *, images: torch.Tensor
) -> Forward:
    """The ONNX export, quantized to int8 by NNCF on the calibration ``images``
    (resnet_mar/quantization.py), run by OpenVINO."""
    from resnet_mar.quantization import quantize_onnx

    fp32 = path.with_name(path.name.removesuffix(".int8.onnx") + ".fp32.onnx")
    export_onnx(model, fp32, preprocessing)
    try:
        quantize_onnx(fp32, path, images)
    finally:
        fp32.unlink(missing_ok=True)
    return openvino_forward(path)


def openvino_forward(path: Path) -> Forward:
    """The served file through the handler's own OpenVINO runtime, once a child process has
    compiled it on this CPU: a crash while compiling (openvino#35943 reports one on a Zen 4
    CPU) then stops the build with a message instead of killing it."""
    from resnet_serving.model_runtimes import load_openvino

    compile_here = "import sys, openvino; openvino.Core().compile_model(sys.argv[1], 'CPU')"
    probe = subprocess.run(
        [sys.executable, "-c", compile_here, str(path)], capture_output=True, text=True, timeout=600
    )
    if probe.returncode != 0:
        raise ExportError(
            f"OpenVINO cannot compile {path.name} on this CPU (exit {probe.returncode}): "
            f"{probe.stderr.strip()[-500:]}; use another FORMAT here"
        )
    return load_openvino(str(path), torch.get_num_threads())


EXPORTERS: dict[str, tuple[str, Exporter]] = {
    "torchscript": (".pt", export_torchscript),
    "onnx": (".onnx", export_onnx),
    "aoti": (".pt2", export_aoti),
    "openvino": (".onnx", export_openvino),
    # Needs calibration images too (resnet_mar/build.py passes them).
    "int8": (".int8.onnx", export_int8),
}
