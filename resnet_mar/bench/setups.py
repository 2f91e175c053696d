"""What the benchmark sends and serves, as data: the photos that ship inside installed packages,
as JPEG bytes, and each served setup (another one is one more entry in :func:`served_setups`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from resnet_mar.bench.load_client import HttpRequest, jpeg_predictions, jpeg_v2_infer
from resnet_mar.bench.results import Int8Gate
from resnet_mar.photos import photo_paths
from resnet_mar.worker_environment import WORKER_ENVIRONMENT

#: The build's sample photos (resnet_mar/photos.py), the ones the tests serve too.
PHOTOS = tuple(photo_paths().values())
JPEG_QUALITY = 90
#: The large/small JPEG pair is made from this photo, both stretched to 4:3 as a phone photo is.
SIZE_TEST_PHOTO = photo_paths()["coffee"]
JPEG_SIZES = {"small": (640, 480), "large": (4000, 3000)}

#: The headline compares the setups at this many clients; all-busy runs it per model.
HEADLINE_CONCURRENCY = 16
STOCK = "stock"
#: Our TorchScript archive asked over the Open Inference Protocol.
V2 = "ours-torchscript-v2"

#: The benchmark's untrained models miss the trained-model int8 gate: random weights exaggerate
#: quantization error (docs/benchmark/int8.md). The int8 tests build with these thresholds too.
UNTRAINED_INT8_GATE = Int8Gate(min_agreement=0.6, max_error=0.5)

#: TorchServe's defaults, but for what a benchmark on a shared machine must change: loopback
#: addresses (moved to free ports by ``private_server``) and no token (requests carry none).
STOCK_CONFIG = """\
inference_address=http://127.0.0.1:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
disable_token_authorization=true
"""


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def photo_payloads() -> list[bytes]:
    """JPEGs as they are, PNGs re-encoded (decoding a PNG would cost more than the model)."""
    return [p.read_bytes() if p.suffix == ".jpg" else jpeg_bytes(Image.open(p)) for p in PHOTOS]


@dataclass(frozen=True)
class SizedJpeg:
    pixels: str
    data: bytes


def size_test_payloads() -> dict[str, SizedJpeg]:
    photo = Image.open(SIZE_TEST_PHOTO).convert("RGB")
    return {
        which: SizedJpeg(f"{w}x{h}", jpeg_bytes(photo.resize((w, h), Image.Resampling.BICUBIC)))
        for which, (w, h) in JPEG_SIZES.items()
    }


#: How a setup's clients ask for one model: its name and the photos -> the requests they cycle.
RequestShape = Callable[[str, Sequence[bytes]], list[HttpRequest]]


@dataclass(frozen=True)
class ServedSetup:
    """One way of serving the models: ours (archive.sh's archive, the project's config, all
    models from one server as ``make serve`` runs them, each measured while the others idle) or
    ``stock`` (the same file behind ``image_classifier``, no model-config, TorchServe's defaults,
    each model from a server of its own)."""

    label: str
    model_format: str
    stock: bool = False
    requests: RequestShape = jpeg_predictions
    #: None: the run's concurrencies.
    concurrencies: tuple[int, ...] | None = None
    #: Time a 12-megapixel JPEG against a 0.3-megapixel one at concurrency 1.
    jpeg_sizes: bool = False
    #: Measure the exact-preprocessing bound again right before and right after each model's
    #: headline point, and load every model of the server at once after the sweep.
    bound_and_all_busy: bool = False

    def server(self) -> dict[str, Any]:
        """``private_server``'s options: stock without the environment the benchmark runs with."""
        if self.stock:
            return {"config_text": STOCK_CONFIG, "worker_environment": {}, "isolated": False}
        return {"config_text": None, "worker_environment": WORKER_ENVIRONMENT, "isolated": True}


def ours(model_format: str) -> str:
    return f"ours-{model_format}"


def served_setups(formats: Sequence[str]) -> list[ServedSetup]:
    """In the order they are measured and reported: ours for each format; right after
    ours-torchscript, the same archive over the Open Inference Protocol, then the stock setup
    (the same ``.pt``, each model alone: the kindest case for it)."""
    setups = []
    for fmt in formats:
        setups.append(
            ServedSetup(ours(fmt), fmt, jpeg_sizes=fmt == "torchscript", bound_and_all_busy=True)
        )
        if fmt == "torchscript":
            setups.append(
                ServedSetup(V2, fmt, requests=jpeg_v2_infer, concurrencies=(HEADLINE_CONCURRENCY,))
            )
            setups.append(ServedSetup(STOCK, fmt, stock=True))
    return setups
