"""Integrated-gradients explanations: how much each pixel moved the top-1 class's logit.

TorchServe hands ``/explanations/<model>`` and KServe v1 ``/v1/models/<model>:explain`` requests
to the handler's ``handle`` like predictions, with the request header ``explain: True``. The
handler answers each request of a batch by what it asked for: explanations are computed one by
one after the batch's forward pass, with the functions here, which need no server.

Choices, each also stated in the README:

* Captum's ``IntegratedGradients`` (the library TorchServe's stock handlers use), imported when a
  worker loads (:func:`unavailable`), never when this module is: a server without captum still
  loads and answers predictions, and each explanation request gets a 501 saying what is missing.
* Target: the image's top-1 class. Baseline: the black picture (every pixel 0, normalised as the
  model's input is), the reference of IG's paper for images: the attributions split the logit's
  difference between the photo and "nothing". Zeros in normalised space would be a flat picture
  of the ImageNet mean colour, which has content of its own.
* Attributions summed over the 3 colour channels: one value per pixel of the crop (224 x 224),
  a third of the size, and still complete (their sum is the sum over every channel). Rounded to
  :data:`SIGNIFICANT_DIGITS` and sent as compact JSON: about 0.5 MB for 224 x 224, within
  config.properties' ``max_response_size`` (TorchServe would indent a dict answer, doubling it).
* Cost bounded by the archive's settings (serving_schema.py): ``ig_steps`` gradient evaluations,
  each a forward and a backward pass of one image, run ``ig_internal_batch`` images at a time
  (which bounds the memory); an explanation request carries one image.

Gradients need a model torch can differentiate: a TorchScript file can (frozen, its weights are
constants, but gradients flow to its input); ONNX Runtime and AOTInductor packages cannot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from resnet_serving.inference_protocols import KSERVE_V1, OPEN_INFERENCE, PREDICTIONS, ParsedRequest
from resnet_serving.input_errors import BadInput
from resnet_serving.serving_schema import Preprocessing

Forward = Callable[[torch.Tensor], torch.Tensor]

#: Formats whose runtime computes gradients (model_runtimes.py).
GRADIENT_FORMATS = ("torchscript",)
#: Precision of each attribution in the answer: finer than a heat map shows, and it keeps
#: every float32 value within 10 characters of JSON (-1.235e-12).
SIGNIFICANT_DIGITS = 4
NOT_IMPLEMENTED = 501


@dataclass(frozen=True)
class Attribution:
    """Integrated gradients of one image for one class."""

    #: crop x crop: each pixel's attribution, summed over the colour channels.
    pixels: torch.Tensor
    #: Captum's convergence delta: sum of the attributions minus (logit at the image minus
    #: logit at the baseline); the error of the integral's approximation with these steps.
    delta: float
    target: int


def unavailable(model_format: str) -> BadInput | None:
    """Why this worker cannot explain, as the 501 its explanation requests get; None when it
    can. Imports captum (about a second, once per worker)."""
    if model_format not in GRADIENT_FORMATS:
        return BadInput(
            NOT_IMPLEMENTED,
            "ExplanationsUnsupported",
            f"this model is served as {model_format}, whose runtime computes no gradients: "
            f"explanations need FORMAT={' or '.join(GRADIENT_FORMATS)}",
        )
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        return BadInput(
            NOT_IMPLEMENTED,
            "ExplanationsUnavailable",
            "explanations need the captum package, which is not installed where TorchServe "
            "runs: pip install captum==0.9.0 into its environment (make setup does)",
        )
    return None


def refusal(request: ParsedRequest) -> BadInput | None:
    """Why an explanation request is refused whatever the worker can do, or None."""
    if request.protocol == OPEN_INFERENCE:
        return BadInput(
            NOT_IMPLEMENTED,
            "ExplanationsUnsupported",
            "the Open Inference Protocol defines no explanation answer: ask "
            "/explanations/<model> or KServe v1 /v1/models/<model>:explain",
        )
    if len(request.images) > 1:
        return BadInput(
            413,
            "TooManyImages",
            f"{len(request.images)} images in one explanation request: an explanation costs "
            "many forward and backward passes, so each request explains one image",
        )
    return None


def black_baseline(preprocessing: Preprocessing, like: torch.Tensor) -> torch.Tensor:
    """The all-black picture as the model sees it: pixel 0, normalised; shaped like ``like``."""
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    return ((0.0 - mean) / std).expand_as(like).contiguous()


def channels_last(forward: Forward) -> Forward:
    """``forward`` fed channels-last copies of its batches: TorchScript convolutions (oneDNN)
    run them faster from 3 images up, with gradients too (measured on 2 cores, 32 steps in
    passes of 8: resnet18 0.97 s instead of 1.14 s per explanation, resnet50 2.26 s instead of
    2.57 s)."""

    def forward_channels_last(batch: torch.Tensor) -> torch.Tensor:
        return forward(batch.contiguous(memory_format=torch.channels_last))

    return forward_channels_last


def integrated_gradients(
    forward: Forward,
    image: torch.Tensor,
    target: int,
    *,
    baseline: torch.Tensor,
    steps: int,
    internal_batch: int,
) -> Attribution:
    """IG of ``forward``'s logit ``target`` for ``image`` (1 x 3 x H x W, normalised) from
    ``baseline``, on ``steps`` points of the path (Gauss-Legendre, captum's default), at most
    ``internal_batch`` images per forward and backward pass.

    Gradients are on whatever the caller's mode: predictions run under inference mode."""
    from captum.attr import IntegratedGradients

    with torch.inference_mode(False), torch.enable_grad():
        attributions, delta = IntegratedGradients(forward).attribute(
            image,
            baselines=baseline,
            target=target,
            n_steps=steps,
            internal_batch_size=internal_batch,
            return_convergence_delta=True,
        )
    return Attribution(attributions[0].detach().sum(dim=0), float(delta.item()), target)


def rounded(values: torch.Tensor, digits: int = SIGNIFICANT_DIGITS) -> list[list[float]]:
    """Rows of ``values`` to ``digits`` significant digits (JSON then prints them as short as
    that: 0.001234, 1.234e-05)."""
    return [[float(f"{value:.{digits}g}") for value in row] for row in values.tolist()]


def explanation_answer(
    attribution: Attribution,
    label: str,
    probability: float,
    steps: int,
    crop: tuple[float, ...],
    image_size: tuple[int, int],
) -> dict[str, Any]:
    """One image's explanation: its top-1 class, that class's probability, the per-pixel map,
    how far the map is from complete (the convergence delta), and where the map lies on the
    photo (``crop``: left, top, right, bottom in the pixels of the upright photo of
    ``image_size``), so a client can draw it over the photo without the preprocessing."""
    return {
        "label": label,
        "probability": probability,
        "attributions": rounded(attribution.pixels),
        "delta": attribution.delta,
        "steps": steps,
        "crop": {"box": [round(edge, 2) for edge in crop], "image_size": list(image_size)},
    }


def encode_explanation(protocol: str, answer: dict[str, Any]) -> str:
    """The answer in the request's protocol, as compact JSON text (sent as it is)."""
    if protocol == PREDICTIONS:
        document: dict[str, Any] = answer
    elif protocol == KSERVE_V1:
        document = {"explanations": [answer]}
    else:
        raise ValueError(f"no explanation answer for protocol {protocol!r}")
    return json.dumps(document, separators=(",", ":"), allow_nan=False)
