"""TorchServe handler for torchvision image classifiers archived by this toolkit.

Runs inside TorchServe, so it imports only torch, torchvision, Pillow, TorchServe and its sibling
files packed into the same archive. Everything model-specific (preprocessing, top-k, threads,
limits) comes from the ``handler:`` section of the archive's ``model-config.yaml``.

Lifecycle, one short stage each (each testable without a server):
    decode_request   one TorchServe request -> (resized and cropped pixels, top-k) or BadInput
    model_input      the good requests' pixels -> one normalised float batch, in one pass
    inference        that batch -> probabilities, in one forward pass
    encode_response  one probability row -> {"label": probability, ...}, best first
``handle`` ties them together; a bad request gets its own 4xx inside a successful batch
(``context.set_response_status``), so it never fails the requests batched with it.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from compute_gate import ComputeGate
from handler_settings import HandlerSettings, environment_advice
from image_decoding import decode_rgb
from input_errors import BadInput, bad_request
from model_runtimes import load_model
from PIL import Image
from request_payload import extract_payload
from torchvision.transforms import functional as F

logger = logging.getLogger(__name__)

#: A decoded request: its crop (uint8, RGB x height x width) and top-k, or the error to answer
#: it with.
Decoded = tuple[torch.Tensor, int] | BadInput


def crop_pixels(image: Image.Image, settings: HandlerSettings) -> torch.Tensor:
    """The geometric half of torchvision's ``ImageClassification`` (resize, centre crop) as a
    uint8 view of Pillow's pixels. It runs on the decoding threads, so it does no arithmetic in
    torch: a torch op there would start a second OpenMP team per thread, competing with the
    model's for the cores."""
    image = F.resize(
        image, [settings.resize_size], interpolation=settings.interpolation, antialias=True
    )
    return F.pil_to_tensor(F.center_crop(image, [settings.crop_size]))


def model_input(
    crops: list[torch.Tensor], settings: HandlerSettings, *, channels_last: bool = False
) -> torch.Tensor:
    """The arithmetic half of ``ImageClassification`` (to float in [0, 1], normalise), once for
    the whole batch: the same operations in the same order as the per-image transform, so the
    values are bit-identical to it.

    Pillow's pixels are height x width x RGB, so stacking them in that order and viewing the
    batch as N x C x H x W gives the channels-last layout without a copy; NCHW costs one copy
    of the uint8 pixels, before they become floats.
    """
    pixels = torch.stack([crop.permute(1, 2, 0) for crop in crops]).permute(0, 3, 1, 2)
    if not channels_last:
        pixels = pixels.contiguous()
    mean = torch.tensor(settings.mean).view(1, -1, 1, 1)
    std = torch.tensor(settings.std).view(1, -1, 1, 1)
    return pixels.float().div_(255).sub_(mean).div_(std)


def parse_topk(raw: Any, num_classes: int) -> int:
    """A positive integer, clamped to the number of classes."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.lstrip("+").isdigit() or int(text) < 1:
        raise bad_request("InvalidOption", f"topk must be a positive integer, got {text[:40]!r}")
    return min(int(text), num_classes)


def decode_request(
    request: dict[str, Any], headers: dict[str, str], settings: HandlerSettings, num_classes: int
) -> tuple[torch.Tensor, int]:
    """One request (and its lower-cased HTTP headers) -> its resized and cropped pixels and its
    top-k; raises :class:`BadInput`."""
    payload = extract_payload(request, headers)
    topk = parse_topk(payload.options.get("topk", settings.topk), num_classes)
    image = decode_rgb(
        payload.image,
        max_pixels=settings.max_image_pixels,
        draft_min_side=settings.jpeg_draft_factor * settings.resize_size,  # 0: full decode
    )
    return crop_pixels(image, settings), topk


def encode_response(probabilities: torch.Tensor, topk: int, labels: list[str]) -> dict[str, float]:
    """The stock handler's shape, ``{"label": probability}`` best first.

    ImageNet repeats two names ("crane", "maillot"); a repeated label keeps its best score.
    """
    scores, indices = probabilities.topk(topk)
    response: dict[str, float] = {}
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        response.setdefault(labels[index], score)
    return response


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


class ResNetClassifierHandler:
    """TorchServe entry point: ``initialize`` once per worker, ``handle`` once per batch."""

    def __init__(self) -> None:
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        self.settings = HandlerSettings.from_config(context.model_yaml_config.get("handler", {}))
        advice = environment_advice(self.settings.worker_environment, os.environ)
        if advice:
            logger.warning(advice)
        serialized = context.manifest["model"]["serializedFile"]
        self.model = load_model(
            os.path.join(model_dir, serialized),
            self.settings.model_format,
            self.settings.intra_op_threads,
        )
        self.labels = load_labels(model_dir)
        self._decoders = ThreadPoolExecutor(
            max_workers=self.settings.intra_op_threads, thread_name_prefix="decode"
        )
        self._gate = ComputeGate()
        with self._gate:
            self._warm_up()
        self.initialized = True
        logger.info(
            "loaded %s: %d classes, %d threads, preprocessing resize %d crop %d",
            serialized,
            len(self.labels),
            self.settings.intra_op_threads,
            self.settings.resize_size,
            self.settings.crop_size,
        )

    def _warm_up(self) -> None:
        """Run the model before the first request (TorchScript optimises on its first calls),
        in both input layouts ``handle`` uses, and check that its outputs match the label map."""
        blank = torch.zeros(3, self.settings.crop_size, self.settings.crop_size, dtype=torch.uint8)
        for batch in (1, 2, 4, 1):
            logits = self.inference(self.batch_input([blank] * batch))
        if logits.shape[1] != len(self.labels):
            raise ValueError(
                f"the model has {logits.shape[1]} outputs but index_to_name.json has "
                f"{len(self.labels)} labels"
            )

    def preprocess(
        self, requests: list[dict[str, Any]], headers: list[dict[str, str]]
    ) -> list[Decoded]:
        """Decode a batch on as many threads as the model may use: Pillow decodes and resizes
        without holding the GIL, and these threads run no torch ops (see ``crop_pixels``)."""
        return list(self._decoders.map(self._decode_one, requests, headers))

    def _decode_one(self, request: dict[str, Any], headers: dict[str, str]) -> Decoded:
        try:
            return decode_request(request, headers, self.settings, len(self.labels))
        except BadInput as err:
            return err

    def batch_input(self, crops: list[torch.Tensor]) -> torch.Tensor:
        # TorchScript convolutions (oneDNN) compute 25-40% more images/s on channels-last input
        # from 3 images up (measured on 2 AVX-512 cores, resnet18 and resnet50, batches 3-16;
        # served at 16 clients: +11% and +20% req/s); below that NCHW is as fast or faster
        # (resnet50 batch 1: 29 vs 29-36 ms, batch 2: 57 vs 60 ms). Other runtimes get NCHW,
        # as they were exported.
        channels_last = self.settings.model_format == "torchscript" and len(crops) >= 3
        return model_input(crops, self.settings, channels_last=channels_last)

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch).softmax(dim=1)

    def postprocess(
        self, decoded: list[Decoded], probabilities: torch.Tensor
    ) -> list[dict[str, Any]]:
        rows = iter(probabilities)
        return [
            item.body()
            if isinstance(item, BadInput)
            else encode_response(next(rows), item[1], self.labels)
            for item in decoded
        ]

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        headers = [http_headers(context, idx) for idx in range(len(data))]
        with self._gate:  # decoding and the forward pass use all cores: one model at a time
            decoded = self.preprocess(data, headers)
            crops = [item[0] for item in decoded if not isinstance(item, BadInput)]
            probabilities = self.inference(self.batch_input(crops)) if crops else torch.empty(0)
        for idx, item in enumerate(decoded):
            context.set_response_content_type(idx, "application/json")
            if isinstance(item, BadInput):
                context.set_response_status(item.status, item.kind, idx)
                fields = {k: type(v).__name__ for k, v in data[idx].items()}
                logger.info("request %d refused: %d %s %s", idx, item.status, item.message, fields)
        return self.postprocess(decoded, probabilities)
