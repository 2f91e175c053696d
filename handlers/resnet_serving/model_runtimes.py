"""Load an archive's serialized model, whatever format the build wrote, as a forward function.

Runs inside TorchServe next to ``resnet_handler.py``, so it imports torch and nothing from the
build package (an archive ships handlers/ alone). onnxruntime and openvino are imported only for
the formats that need them: they are optional extras, and a TorchScript server need not install
them.

Each loader returns logits for a float batch [N, 3, H, W] and keeps the model to ``threads``
intra-op threads (the handler's compute gate keeps models served together from running theirs
side by side).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
#: Formats whose model computes in torch's own intra-op pool.
TORCH_RUNTIMES = ("torchscript", "aoti")


def load_torchscript(path: str, threads: int) -> Forward:
    """A frozen TorchScript module; it computes in torch's process-wide intra-op pool."""
    return torch.jit.load(path, map_location="cpu").eval()


def load_aoti(path: str, threads: int) -> Forward:
    """An AOTInductor ``.pt2`` package: compiled C++ kernels plus aten calls, all parallelised
    with torch's intra-op pool (the kernels read its size when they run, not when compiled).

    The kernels assume the contiguous NCHW strides they were compiled for: a strided input
    (a view, channels-last) gives wrong answers without any error, so it is made contiguous."""
    package = torch._inductor.aoti_load_package(path)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return package(batch.contiguous())

    return forward


def load_onnx(path: str, threads: int) -> Forward:
    """An ONNX Runtime session on the CPU provider with its own thread pool of ``threads``.

    One sequential inter-op thread: a ResNet is a chain of convolutions, so parallel branches
    would only add threads competing for the same cores. Graph optimisations (fusions, constant
    folding) are all on; they are done once here, when the worker starts.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads would otherwise spin, taking the cores from the decoding threads and
    # from other models between batches (docs/benchmark/settings.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {input_name: batch.detach().contiguous().numpy()})
        return torch.from_numpy(logits)

    return forward


def load_openvino(path: str, threads: int) -> Forward:
    """OpenVINO's CPU plugin running an ONNX file: FP32 (FORMAT=openvino) or NNCF's int8 QDQ
    model (FORMAT=int8, whose quantized layers run int8, with AMX or VNNI where the CPU has them).

    ``INFERENCE_PRECISION_HINT`` f32: without it OpenVINO runs FP32 layers in bf16 on CPUs that
    have bf16 (faster, but the answers then move from the model's); the int8 layers stay int8.
    The LATENCY hint gives one stream on ``threads`` threads, which is what one batch at a time
    under the compute gate needs (THROUGHPUT with one request ran at half speed); one infer
    request, reused. OpenVINO's own threads sleep about 1 ms after a call, so they do not compete
    with the decoding threads between batches."""
    import openvino

    compiled = openvino.Core().compile_model(
        path,
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        },
    )
    request = compiled.create_infer_request()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        request.infer({0: batch.detach().contiguous().numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return forward


#: One loader per format of ``serving_schema.MODEL_FORMATS`` (a test keeps them equal).
LOADERS: dict[str, Callable[[str, int], Forward]] = {
    "torchscript": load_torchscript,
    "onnx": load_onnx,
    "aoti": load_aoti,
    "openvino": load_openvino,
    "int8": load_openvino,
}


def load_model(path: str, model_format: str, threads: int) -> Forward:
    """The model at ``path`` as a function from an image batch to logits, on ``threads``
    threads; ``model_format`` is the ``format`` the build wrote into model-config.yaml.

    torch's intra-op pool is sized here for every format. The torch formats compute in it. For
    the others it only normalises each batch, on one thread: with more, its idle OpenMP threads
    spin against the runtime's own pool (docs/benchmark/settings.md)."""
    if model_format not in LOADERS:
        raise ValueError(
            f"model-config.yaml format {model_format!r} is not one this handler serves: "
            f"{', '.join(LOADERS)}"
        )
    torch.set_num_threads(threads if model_format in TORCH_RUNTIMES else 1)
    return LOADERS[model_format](path, threads)
