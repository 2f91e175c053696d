"""TorchServe handler for torchvision image classifiers archived by this toolkit.

Runs inside TorchServe, so it imports only torch, torchvision, Pillow, TorchServe and its sibling
files packed into the same archive. Everything model-specific comes from the archive's
``model-config.yaml``, read through ``serving_schema.py``.

Stages, each a function of its input that runs without a server:
    read_request    one TorchServe request -> its protocol, images and options
                    (inference_protocols.py: /predictions, KServe v1, Open Inference v2)
    decode_image    image bytes -> the resized, centre-cropped uint8 pixels (or a BadInput)
    model_input     the crops of a batch -> one normalised float batch
    classify        that batch -> probabilities, in one forward pass for every image of every
                    request in the TorchServe batch
    encode_answer   each request's probability rows -> its answer, in its protocol's shape
    explain         an explanation request's image -> integrated gradients of its top-1 class
                    (explanations.py), one request after the other, after the forward pass
``handle`` ties them together for a TorchServe batch. Everything done for one request runs
under a guard: whatever goes wrong there becomes that request's own 4xx (or 501, for an
explanation this worker cannot give; set with ``context.set_response_status``), never the 503
TorchServe gives a whole batch whose handler raised. TorchServe takes the one class this
module defines as its entry point, so every other type lives in a sibling module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from resnet_serving.compute_gate import ComputeGate
from resnet_serving.cpu_budget import usable_cpus
from resnet_serving.envelope_bypass import bypass_envelopes
from resnet_serving.explanation_turns import ExplanationTurns
from resnet_serving.explanations import (
    black_baseline,
    channels_last,
    encode_explanation,
    explanation_answer,
    integrated_gradients,
    refusal,
    unavailable,
)
from resnet_serving.image_decoding import (
    DecodeBudget,
    decoded_rgb,
    share_one_malloc_arena,
    upright_size,
)
from resnet_serving.inference_protocols import (
    Answer,
    ModelIdentity,
    ParsedRequest,
    bounded,
    encode_answer,
    error_answer,
    protocol_of,
    read_request,
)
from resnet_serving.input_errors import BadInput
from resnet_serving.model_runtimes import load_model
from resnet_serving.request_metrics import ANSWERED, RequestMetrics
from resnet_serving.request_payload import field_names
from resnet_serving.resize_crop import crop_box, resized_center_crop
from resnet_serving.serving_schema import AUTO, HandlerSettings, ModelConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


def decode_image(
    data: bytes, settings: HandlerSettings, budget: DecodeBudget | None = None
) -> torch.Tensor:
    """Encoded bytes -> the crop the model sees, as a 3 x crop x crop uint8 view of the pixels.

    It runs on the decoding threads, so it does no arithmetic in torch: a torch op there would
    start a second OpenMP team per thread, competing with the model's for the cores. They share
    ``budget``, which bounds the decoded bytes they hold at once (alone without one)."""
    pre = settings.preprocessing
    with decoded_rgb(
        data,
        budget or DecodeBudget(settings.max_decoded_bytes),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_decoded_bytes,
        max_jpeg_scans=settings.max_jpeg_scans,
        draft_min_side=settings.jpeg_draft_factor * pre.resize_size,  # 0: full decode
    ) as image:
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


def load_labels(model_dir: str) -> list[str]:
    with open(os.path.join(model_dir, "index_to_name.json")) as f:
        mapping = json.load(f)
    names = {int(k): (v[-1] if isinstance(v, list) else v) for k, v in mapping.items()}
    return [names[i] for i in range(len(names))]


def http_headers(context: Any, idx: int) -> dict[str, str]:
    """A request's HTTP headers with lower-case names (TorchServe keeps the client's case and
    mixes in per-field content types, which are dicts), their values as the client sent them:
    TorchServe's frontend reads header bytes as Latin-1 and passes them on as UTF-8, so a UTF-8
    value ("③") would otherwise reach the handler as mojibake ("â\x91¢")."""
    found = context.get_all_request_header(idx) or {}
    return {
        name.lower(): _as_sent(value) for name, value in found.items() if isinstance(value, str)
    }


def _as_sent(value: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def came_over_grpc(headers: dict[str, str]) -> bool:
    """Whether a request came through TorchServe's gRPC API: its REST frontend always adds
    headers (content-length at least), gRPC calls carry none but TorchServe's sequence keys."""
    return all(name.startswith("ts_request_sequence_") for name in headers)


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


def rows_per_request(
    crops: list[list[torch.Tensor] | BadInput], probabilities: torch.Tensor
) -> list[list[torch.Tensor]]:
    """The batch's probability rows, split by request (none for a refused one)."""
    rows = iter(probabilities)
    return [[next(rows) for _ in own] if isinstance(own, list) else [] for own in crops]


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
        if not share_one_malloc_arena():
            logger.info("not glibc: decoding memory is bounded per decoding thread")
        advice = environment_advice(self.settings.worker_environment, os.environ)
        if advice:
            logger.warning(advice)
        self.threads = resolve_threads(self.settings)
        serialized = context.manifest["model"]["serializedFile"]
        self.model = load_model(
            os.path.join(model_dir, serialized), self.settings.model_format, self.threads
        )
        self.labels = load_labels(model_dir)
        self._cannot_explain = unavailable(self.settings.model_format)
        self._explanation_turns = ExplanationTurns(self.settings.explanation_share)
        self.identity = ModelIdentity(
            name=context.model_name, version=str(context.manifest["model"].get("modelVersion", ""))
        )
        self.metrics = RequestMetrics(context)
        self._decoders = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")
        self._decode_budget = DecodeBudget(self.settings.max_decoded_bytes)
        self._gate = ComputeGate()
        with self._gate:
            self._warm_up()
        bypassed = bypass_envelopes(self)
        if bypassed:
            logger.info(
                "TorchServe's %s envelope passes requests through: this handler answers KServe "
                "v1 and v2 itself, one answer per request, batching intact",
                ", ".join(bypassed),
            )
        self.initialized = True
        pre = self.settings.preprocessing
        logger.info(
            "loaded %s (%s): %d classes, threads=%d, preprocessing resize %d crop %d; %s",
            serialized,
            self.settings.model_format,
            len(self.labels),
            self.threads,
            pre.resize_size,
            pre.crop_size,
            f"explanations: {self.settings.ig_steps} steps"
            if self._cannot_explain is None
            else f"explanation requests get {self._cannot_explain.status}: "
            f"{self._cannot_explain.message}",
        )

    def _warm_up(self) -> None:
        """Run the model before the first request (TorchScript optimises on its first calls),
        in both input layouts ``batch_input`` uses, and check that its outputs match the label
        map: a model that cannot answer must never become READY."""
        crop = self.settings.preprocessing.crop_size
        blank = torch.zeros(3, crop, crop, dtype=torch.uint8)
        for batch in (1, 2, 4, 8, 1):  # OpenVINO's first call at a new batch size costs more
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
            self._decoders.map(
                lambda data: guarded(decode_image, data, self.settings, self._decode_budget),
                images,
            )
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        started = time.perf_counter()
        headers = [http_headers(context, idx) for idx in range(len(data))]
        parsed = [guarded(self._read, request, headers[idx]) for idx, request in enumerate(data)]
        parsed = self._explanations_in_turn(parsed)
        with self._gate:  # decoding and the forward pass use all cores: one model at a time
            crops = self._decode_requests(parsed)
            good = [crop for own in crops if isinstance(own, list) for crop in own]
            probabilities = self.classify(self.batch_input(good)) if good else torch.empty(0)
            rows = rows_per_request(crops, probabilities)
            explained = self._explain_requests(parsed, crops, rows)
        answers = []
        for idx, (request, own) in enumerate(zip(parsed, crops, strict=True)):
            outcome: Any = own if isinstance(own, BadInput) else request
            if idx in explained:
                outcome = explained[idx]
            elif isinstance(outcome, ParsedRequest):
                outcome = guarded(self._answer, outcome, rows[idx])
            protocol = request.protocol if isinstance(request, ParsedRequest) else None
            answers.append(self._respond(idx, outcome, protocol, data[idx], headers[idx], context))
            if came_over_grpc(headers[idx]):
                # One answer ends the call. TorchServe's StreamPredictions otherwise reads a
                # missing "ts_stream_next" header, fails, and kills the worker (and with it the
                # batch's other requests); unary Predictions ignores it. Never on REST: there it
                # would make TorchServe stream the body without sending the response head.
                context.set_response_header(idx, "ts_stream_next", "false")
        elapsed = time.perf_counter() - started
        for answer in answers:
            self.metrics.record(answer[1], elapsed)
        return [answer[0] for answer in answers]

    def _answer(self, request: ParsedRequest, rows: list[torch.Tensor]) -> Answer:
        answer = encode_answer(request, rows, self.labels, self.identity)
        return bounded(answer, self.settings.max_answer_bytes)

    def _read(self, request: dict[str, Any], headers: dict[str, str]) -> ParsedRequest:
        parsed = read_request(
            request,
            headers,
            default_topk=self.settings.topk,
            num_classes=len(self.labels),
            max_images=self.settings.max_images_per_request,
        )
        refused = (self._cannot_explain or refusal(parsed)) if parsed.explain else None
        if refused is not None:
            # Before decoding: a refused explanation costs nothing. A fresh copy each time: the
            # worker's one instance, raised again, would keep every request's frames alive.
            raise dataclasses.replace(refused)
        return parsed

    def _explanations_in_turn(
        self, parsed: list[ParsedRequest | BadInput]
    ) -> list[ParsedRequest | BadInput]:
        """The batch with its explanation requests that must wait answered 503 (before they are
        decoded): each costs ``ig_steps`` forward and backward passes, on all cores, and the
        predictions queued behind it wait for it."""
        explaining = [
            idx for idx, request in enumerate(parsed)
            if isinstance(request, ParsedRequest) and request.explain
        ]  # fmt: skip
        runs = explaining[:1] if self._explanation_turns.open() else []
        waiting = set(explaining) - set(runs)
        return [
            self._explanation_turns.busy() if idx in waiting else request
            for idx, request in enumerate(parsed)
        ]

    def _explain_requests(
        self,
        parsed: list[ParsedRequest | BadInput],
        crops: list[list[torch.Tensor] | BadInput],
        rows: list[list[torch.Tensor]],
    ) -> dict[int, Answer | BadInput]:
        """The admitted explanation's answer (or refusal) by its index; its time sets when the
        next one may run."""
        answers = {}
        for idx, (request, own) in enumerate(zip(parsed, crops, strict=True)):
            if isinstance(request, ParsedRequest) and request.explain and isinstance(own, list):
                with self._explanation_turns.turn():
                    answers[idx] = guarded(
                        self.explain, request.images[0], own[0], rows[idx][0], request.protocol
                    )
        return answers

    def explain(
        self, data: bytes, crop: torch.Tensor, probabilities: torch.Tensor, protocol: str
    ) -> Answer:
        """Integrated gradients of the top-1 class of one decoded image (``data`` encoded,
        ``crop`` decoded), from the black picture (explanations.py), answered as compact JSON in
        ``protocol``'s shape with the crop's place on the photo. The model gets float batches
        with gradients, outside inference mode, channels-last as predictions."""
        probability, target = probabilities.max(dim=0)
        image = model_input([crop], self.settings)
        attribution = integrated_gradients(
            channels_last(self.model),
            image,
            int(target),
            baseline=black_baseline(self.settings.preprocessing, image),
            steps=self.settings.ig_steps,
            internal_batch=self.settings.ig_internal_batch,
        )
        pre = self.settings.preprocessing
        width, height = upright_size(data)
        answer = explanation_answer(
            attribution,
            self.labels[int(target)],
            float(probability),
            self.settings.ig_steps,
            crop=crop_box(width, height, pre.resize_size, pre.crop_size),
            image_size=(width, height),
        )
        return Answer(encode_explanation(protocol, answer))

    def _decode_requests(
        self, parsed: list[ParsedRequest | BadInput]
    ) -> list[list[torch.Tensor] | BadInput]:
        """Each good request's crops, or the error of its first image that failed (pinned on
        that image's position)."""
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
            failed = next(
                (item.at(i) for i, item in enumerate(own) if isinstance(item, BadInput)), None
            )
            found.append(failed if failed is not None else own)
        return found

    def _respond(
        self,
        idx: int,
        outcome: Answer | BadInput,
        protocol: str | None,
        request: dict[str, Any],
        headers: dict[str, str],
        context: Any,
    ) -> tuple[Any, str]:
        """The body for request ``idx`` and its outcome for the metrics; sets its status, content
        type and headers (errors are JSON too: KServe's model server reads an error's message
        only from a JSON body)."""
        if isinstance(outcome, BadInput):
            context.set_response_status(outcome.status, outcome.kind, idx)
            logger.info(
                "request %d refused: %d %s %s (fields %s)",
                idx,
                outcome.status,
                outcome.kind,
                outcome.message,
                field_names(list(request)),
            )
            kind = outcome.kind
            outcome = error_answer(protocol or protocol_of(request, headers), outcome)
        else:
            kind = ANSWERED
        context.set_response_content_type(idx, outcome.content_type)
        for name, value in outcome.headers:
            context.set_response_header(idx, name, value)
        return outcome.body, kind
