"""FORMAT=int8: post-training static quantization with NNCF, checked against the FP32 model.

Why NNCF + OpenVINO (measured in process on this project's machines, docs/benchmark/int8.md):
it was the fastest int8 path (resnet18 batch 8 about 11x TorchScript FP32 on a CPU with AMX,
ONNX Runtime's QDQ about 3x, PyTorch's X86 quantizer through AOTInductor about 7x with answers
that moved with the batch size), and quantizing the toolkit's own ONNX export keeps the archive
to one ``.onnx`` file that OpenVINO runs as fast as its own IR.

The build stops unless the int8 model agrees with the FP32 model on photos held aside from
calibration (top-1 class, and the probability of that class), with thresholds the user can set;
or, given labelled images of the user's own (``DATA``), unless it keeps FP32's top-1 accuracy on
them within an allowed drop: agreement on a few photos says little about accuracy on one's data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_mar.evaluation import mean_with_interval
from resnet_mar.parity import Forward

#: The gate's defaults: the int8 model gives the FP32 model's top-1 class on this share of the
#: held-aside photos (4 of the 5 default ones)...
MIN_TOP1_AGREEMENT = 0.8
#: ...and the probability it gives the FP32 top-1 class is off by at most this much.
MAX_TOP1_PROBABILITY_ERROR = 0.05
#: With labelled images: the top-1 accuracy the int8 model may lose against FP32 (one point).
MAX_TOP1_ACCURACY_DROP = 0.01
#: Batch size of BatchNorm re-estimation (only for untrained networks, see below).
ESTIMATION_BATCH = 16
#: The mean top-1 probability an untrained network's last layer is scaled to (see below).
TRAINED_CONFIDENCE = 0.5


class QualityError(RuntimeError):
    """The int8 model disagrees with the FP32 model more than the gate allows."""


@dataclass(frozen=True)
class QualityReport:
    photos: int
    top1_agreement: float
    mean_top5_overlap: float
    max_top1_probability_error: float
    max_probability_error: float
    min_top1_agreement: float
    max_top1_probability_error_allowed: float


@dataclass
class LabelledQualityReport:
    images: int
    fp32_top1: float
    int8_top1: float
    #: FP32's top-1 accuracy minus int8's, and its paired 95% interval.
    drop: float
    drop_interval: tuple[float, float]
    max_drop_allowed: float


def estimate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Re-estimate every BatchNorm layer's running statistics on ``images`` (a cumulative
    average over all of them), then return the model in eval mode.

    An untrained network keeps BatchNorm's initial statistics (mean 0, variance 1), so its
    activations are far from normalised and its outputs barely depend on the input: a quality
    gate comparing two such models could not fail. With statistics from real photos the
    untrained network behaves, layer by layer, like a trained one on the scale of its
    activations, and its answers move with the photo. Trained weights are never touched."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch
    model.train()
    with torch.no_grad():
        for batch in images.split(ESTIMATION_BATCH):
            model(batch)
    return model.eval()


def calibrate_confidence(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Scale an untrained network's last layer (weights and bias) so that its mean top-1
    probability on ``images`` is :data:`TRAINED_CONFIDENCE`, about what a trained ImageNet
    ResNet gives photos; returns the factor.

    Even with real BatchNorm statistics an untrained network's logits span only a few units, so
    it gives every class about 1/1000: an error on "the probability of the top-1 class" could
    never exceed the gate's threshold. Scaling the logits changes no ranking, and makes the
    probabilities, and their int8 errors, as large as a trained model's."""
    with torch.no_grad():
        logits = torch.cat([model(batch) for batch in images.split(ESTIMATION_BATCH)])
    low, high = 0.0, 1.0
    while (logits * high).softmax(dim=1).amax(dim=1).mean() < TRAINED_CONFIDENCE:
        high *= 2
    for _ in range(40):  # bisection: the mean top-1 probability grows with the scale
        middle = (low + high) / 2
        if (logits * middle).softmax(dim=1).amax(dim=1).mean() < TRAINED_CONFIDENCE:
            low = middle
        else:
            high = middle
    last = model.fc
    with torch.no_grad():
        last.weight.mul_(high)
        last.bias.mul_(high)
    return high


def quantize_onnx(fp32_onnx: Path, out: Path, images: torch.Tensor) -> Path:
    """NNCF's post-training quantization of an ONNX model into an int8 QDQ ONNX model, with
    activation ranges set from the calibration images' min and max (MINMAX agreed with FP32
    more often on held-aside photos than NNCF's default estimator did)."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    logging.getLogger("nncf").setLevel(logging.WARNING)
    dataset = nncf.Dataset([{"input": image[None].numpy()} for image in images])
    quantized = nncf.quantize(
        onnx.load(str(fp32_onnx)),
        dataset,
        subset_size=len(images),
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    onnx.save(quantized, str(out))
    return out


def check_quality(
    fp32: Forward,
    int8: Forward,
    photos: torch.Tensor,
    *,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
    max_top1_probability_error: float = MAX_TOP1_PROBABILITY_ERROR,
) -> QualityReport:
    """Compare the int8 model with the FP32 model on ``photos``; raise QualityError when it
    breaks the thresholds."""
    with torch.inference_mode():
        expected = fp32(photos).softmax(dim=1)
        actual = int8(photos).softmax(dim=1)
    top1 = expected.argmax(dim=1)
    k = min(5, expected.shape[1])
    overlaps = [
        len(set(a.tolist()) & set(b.tolist())) / k
        for a, b in zip(expected.topk(k).indices, actual.topk(k).indices, strict=True)
    ]
    rows = torch.arange(len(photos))
    report = QualityReport(
        photos=len(photos),
        top1_agreement=(actual.argmax(dim=1) == top1).float().mean().item(),
        mean_top5_overlap=sum(overlaps) / len(overlaps),
        max_top1_probability_error=(actual[rows, top1] - expected[rows, top1]).abs().max().item(),
        max_probability_error=(actual - expected).abs().max().item(),
        min_top1_agreement=min_top1_agreement,
        max_top1_probability_error_allowed=max_top1_probability_error,
    )
    if (
        report.top1_agreement < min_top1_agreement
        or report.max_top1_probability_error > max_top1_probability_error
    ):
        raise QualityError(
            f"the int8 model disagrees with FP32 on {len(photos)} held-aside photos: top-1 "
            f"agreement {report.top1_agreement:.0%} (needs >= {min_top1_agreement:.0%}), top-1 "
            f"probability off by up to {report.max_top1_probability_error:.3f} (allowed "
            f"{max_top1_probability_error}); calibrate on more representative photos "
            "(CALIBRATION=folder) or relax INT8_MIN_AGREEMENT / INT8_MAX_ERROR"
        )
    return report


def check_labelled_quality(
    fp32: Forward,
    int8: Forward,
    batches: Iterable[tuple[torch.Tensor, list[str]]],
    categories: list[str],
    *,
    max_drop: float = MAX_TOP1_ACCURACY_DROP,
) -> LabelledQualityReport:
    """Top-1 accuracy of both models on labelled images (``batches`` of model inputs and label
    names); raise QualityError when int8 loses more than ``max_drop`` of it."""
    fp32_right: list[bool] = []
    int8_right: list[bool] = []
    with torch.inference_mode():
        for images, labels in batches:
            for model, right in ((fp32, fp32_right), (int8, int8_right)):
                top1 = model(images).argmax(dim=1).tolist()
                right += [categories[i] == label for i, label in zip(top1, labels, strict=True)]
    n = len(fp32_right)
    drop, low, high = mean_with_interval(
        [float(a) - float(b) for a, b in zip(fp32_right, int8_right, strict=True)]
    )
    report = LabelledQualityReport(
        images=n,
        fp32_top1=sum(fp32_right) / n,
        int8_top1=sum(int8_right) / n,
        drop=drop,
        drop_interval=(low, high),
        max_drop_allowed=max_drop,
    )
    if drop > max_drop:
        raise QualityError(
            f"the int8 model loses {drop:.1%} top-1 accuracy against FP32 on {n} labelled images "
            f"(FP32 {report.fp32_top1:.1%}, int8 {report.int8_top1:.1%}; allowed {max_drop:.1%}): "
            "calibrate on more representative photos (CALIBRATION=folder) or allow more "
            "(INT8_MAX_DROP)"
        )
    return report
