"""TorchServe handler for torchvision image classifiers archived by this toolkit.

Runs inside TorchServe, so it imports only torch, torchvision, Pillow, TorchServe and its sibling
files packed into the same archive. Everything model-specific comes from the archive's
``model-config.yaml``, read through ``serving_schema.py``.

Stages, each a function of its input that runs without a server:
    read_request    one TorchServe request -> its image bytes and validated options
    decode_image    image bytes -> the resized, centre-cropped uint8 pixels (or a BadInput)
    model_input     the crops of a batch -> one normalised float batch
    classify        that batch -> probabilities, in one forward pass
    encode_answer   one probability row -> {"label": probability, ...}, best first
``handle`` ties them together for a TorchServe batch. Everything done for one request runs
under a guard: whatever goes wrong there becomes that request's own 4xx (set with
``context.set_response_status``), never the 503 TorchServe gives a whole batch whose handler
raised. TorchServe takes the one class this module defines as its entry point, so every other
type lives in a sibling module.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from compute_gate import ComputeGate
from cpu_budget import usable_cpus
from image_decoding import decode_rgb
from input_errors import BadInput
from model_runtimes import load_model
from request_options import parse_topk
from request_payload import ParsedRequest, extract_payload, field_names
from resize_crop import resized_center_crop
from serving_schema import AUTO, HandlerSettings, ModelConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


def read_request(
    request: dict[str, Any], headers: dict[str, str], settings: HandlerSettings, num_classes: int
) -> ParsedRequest:
    """One request (and its lower-cased HTTP headers) -> what it asks; raises BadInput."""
    payload = extract_payload(request, headers)
    topk = parse_topk(payload.options.get("topk", settings.topk), num_classes)
    return ParsedRequest(images=[payload.image], topk=topk)


def decode_image(data: bytes, settings: HandlerSettings) -> torch.Tensor:
    """Encoded bytes -> the crop the model sees, as a 3 x crop x crop uint8 view of the pixels.

    It runs on the decoding threads, so it does no arithmetic in torch: a torch op there would
    start a second OpenMP team per thread, competing with the model's for the cores."""
    pre = settings.preprocessing
    image = decode_rgb(
        data,
        max_pixels=settings.max_image_pixels,
        draft_min_side=settings.jpeg_draft_factor * pre.resize_size,  # 0: full decode
    )
    pixels = resized_center_crop(image, pre.resize_size, pre.crop_size, pre.interpolation)
    return torch.from_numpy(pixels).permute(2, 0, 1)


def model_input(
    crops: list[torch.Tensor], settings: HandlerSettings, *, channels_last: bool = False
) -> torch.Tensor:
    """The arithmetic half of ``ImageClassification`` (to float in [0, 1], normalise), once for
    the whole batch: the same operations in the same order as the per-image transform, so the
    values are bit-identical to it.

    The crops are views of height x width x RGB pixels, so stacking them in that order and
    viewing the batch as N x C x H x W gives the channels-last layout without a copy; NCHW costs
    one copy of the uint8 pixels, before they become floats.
    """
    pixels = torch.stack([crop.permute(1, 2, 0) for crop in crops]).permute(0, 3, 1, 2)
    if not channels_last:
        pixels = pixels.contiguous()
    mean = torch.tensor(settings.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(settings.preprocessing.std).view(1, -1, 1, 1)
    return pixels.float().div_(255).sub_(mean).div_(std)


def encode_answer(probabilities: torch.Tensor, topk: int, labels: list[str]) -> dict[str, float]:
    """The stock handler's shape, ``{"label": probability}`` best first.

    ImageNet repeats two names ("crane", "maillot"); a repeated label keeps its best score.
    """
    scores, indices = probabilities.topk(topk)
    answer: dict[str, float] = {}
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        answer.setdefault(labels[index], score)
    return answer


def load_labels(model_dir: str) -> list[str]:
    with open(os.path.join(model_dir, "index_to_name.json")) as f:
        mapping = json.load(f)
    names = {int(k): (v[-1] if isinstance(v, list) else v) for k, v in mapping.items()}
    return [names[i] for i in range(len(names))]


def http_headers(context: Any, idx: int) -> dict[str, str]:
    """A request's HTTP headers with lower-case names (TorchServe keeps the client's case and
    mixes in per-field content types, which are dicts)."""
    found = context.get_all_request_header(idx) or {}
    return {name.lower(): value for name, value in found.items() if isinstance(value, str)}


def resolve_threads(settings: HandlerSettings) -> int:
    """``intra_op_threads``, with "auto" resolved from the CPUs this worker may use."""
    if settings.intra_op_threads == AUTO:
        return usable_cpus()
    return int(settings.intra_op_threads)


def environment_advice(expected: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """What to change in TorchServe's environment to serve as fast as the archive was tuned
    for, or "" when nothing. A worker cannot set these itself: OpenMP reads them when torch is
    loaded, before the handler is imported. So the handler says it in the log instead."""
    missing = " ".join(f"{k}={v}" for k, v in expected.items() if environ.get(k) != v)
    if not missing:
        return ""
    return (
        f"TorchServe was started without {missing} (handler.worker_environment in the archive's "
        "model-config.yaml): answers stay the same, but under load they come slower. Start it "
        f"as `{missing} torchserve --start ...`; `make serve` does."
    )


def guarded(step: Callable[..., T], *args: Any) -> T | BadInput:
    """``step(*args)``, or the BadInput its request is answered with. An unexpected error is
    logged with its traceback and still answered as this request's 400: it came from this
    request's data, and must not fail the others batched with it."""
    try:
        return step(*args)
    except BadInput as err:
        return err
    except Exception as err:
        logger.exception("request could not be processed")
        return BadInput(
            400, "InvalidRequest", f"the request could not be processed: {type(err).__name__}"
        )


class ResNetClassifierHandler:
    """TorchServe entry point: ``initialize`` once per worker, ``handle`` once per batch."""

    def __init__(self) -> None:
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        self.settings = ModelConfig.from_dict(context.model_yaml_config).handler
        advice = environment_advice(self.settings.worker_environment, os.environ)
        if advice:
            logger.warning(advice)
        self.threads = resolve_threads(self.settings)
        serialized = context.manifest["model"]["serializedFile"]
        self.model = load_model(
            os.path.join(model_dir, serialized), self.settings.model_format, self.threads
        )
        self.labels = load_labels(model_dir)
        self._decoders = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")
        self._gate = ComputeGate()
        with self._gate:
            self._warm_up()
        self.initialized = True
        pre = self.settings.preprocessing
        logger.info(
            "loaded %s (%s): %d classes, threads=%d, preprocessing resize %d crop %d",
            serialized,
            self.settings.model_format,
            len(self.labels),
            self.threads,
            pre.resize_size,
            pre.crop_size,
        )

    def _warm_up(self) -> None:
        """Run the model before the first request (TorchScript optimises on its first calls),
        in both input layouts ``batch_input`` uses, and check that its outputs match the label
        map."""
        crop = self.settings.preprocessing.crop_size
        blank = torch.zeros(3, crop, crop, dtype=torch.uint8)
        for batch in (1, 2, 4, 1):
            probabilities = self.classify(self.batch_input([blank] * batch))
        if probabilities.shape[1] != len(self.labels):
            raise ValueError(
                f"the model has {probabilities.shape[1]} outputs but index_to_name.json has "
                f"{len(self.labels)} labels"
            )

    def batch_input(self, crops: list[torch.Tensor]) -> torch.Tensor:
        # TorchScript convolutions (oneDNN) compute faster on channels-last input from 3 images
        # up; below, NCHW is as fast or faster (docs/benchmark/settings.md). Other runtimes get
        # NCHW, as they were exported.
        channels_last = self.settings.model_format == "torchscript" and len(crops) >= 3
        return model_input(crops, self.settings, channels_last=channels_last)

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch).softmax(dim=1)

    def decode_images(self, images: list[bytes]) -> list[torch.Tensor | BadInput]:
        """Decode on as many threads as the model may use: Pillow decodes and resizes without
        holding the GIL, and these threads run no torch ops (see ``decode_image``)."""
        return list(
            self._decoders.map(lambda data: guarded(decode_image, data, self.settings), images)
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        parsed = [
            guarded(self._read, request, http_headers(context, idx))
            for idx, request in enumerate(data)
        ]
        with self._gate:  # decoding and the forward pass use all cores: one model at a time
            crops = self._decode_requests(parsed)
            good = [
                crop
                for request_crops in crops
                if isinstance(request_crops, list)
                for crop in request_crops
            ]
            probabilities = self.classify(self.batch_input(good)) if good else torch.empty(0)
        rows = iter(probabilities)
        answers = []
        for idx, (request, request_crops) in enumerate(zip(parsed, crops, strict=True)):
            outcome = request_crops if isinstance(request_crops, BadInput) else request
            if isinstance(outcome, ParsedRequest):
                own_rows = [next(rows) for _ in request_crops]
                outcome = guarded(self._answer, outcome, own_rows)
            answers.append(self._respond(idx, outcome, data[idx], context))
        return answers

    def _read(self, request: dict[str, Any], headers: dict[str, str]) -> ParsedRequest:
        return read_request(request, headers, self.settings, len(self.labels))

    def _decode_requests(
        self, parsed: list[ParsedRequest | BadInput]
    ) -> list[list[torch.Tensor] | BadInput]:
        """Each good request's crops, or the error of its first image that failed."""
        images = [
            image
            for request in parsed
            if isinstance(request, ParsedRequest)
            for image in request.images
        ]
        decoded = iter(self.decode_images(images))
        found: list[list[torch.Tensor] | BadInput] = []
        for request in parsed:
            if isinstance(request, BadInput):
                found.append(request)
                continue
            own = [next(decoded) for _ in request.images]
            failed = next((item for item in own if isinstance(item, BadInput)), None)
            found.append(failed if failed is not None else own)
        return found

    def _answer(self, request: ParsedRequest, rows: list[torch.Tensor]) -> dict[str, float]:
        return encode_answer(rows[0], request.topk, self.labels)

    def _respond(
        self, idx: int, outcome: dict[str, float] | BadInput, request: dict[str, Any], context: Any
    ) -> Any:
        context.set_response_content_type(idx, "application/json")
        if not isinstance(outcome, BadInput):
            return outcome
        context.set_response_status(outcome.status, outcome.kind, idx)
        logger.info(
            "request %d refused: %d %s (fields %s)",
            idx,
            outcome.status,
            outcome.message,
            field_names(list(request)),
        )
        return outcome.body()
