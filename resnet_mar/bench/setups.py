"""What the benchmark sends and serves, as data: real photos that ship inside installed packages
(no download) as JPEG bytes, and each served setup as a :class:`ServedSetup`.

A new setup (another format, the same archive behind another protocol, fewer client counts) is
one more entry in :func:`served_setups`; the code that archives, serves and measures reads these
fields and nothing else.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

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

#: The headline compares every setup at this many clients; all-busy runs it per model.
HEADLINE_CONCURRENCY = 16
#: The stock setup's label; ours are ``ours-<format>`` (:func:`ours`).
STOCK = "stock"
#: Our TorchScript archive asked over the Open Inference Protocol.
V2 = "ours-torchscript-v2"

#: The quality gate the benchmark's int8 builds pass. Its models are untrained (speed does not
#: depend on the weights), and untrained networks miss the trained-model gate (top-1 agreement
#: 0.8, top-1 probability within 0.05): random weights exaggerate quantization error
#: (docs/benchmark/int8.md). These are the thresholds the int8 tests build them with.
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
    """The request bodies: JPEG files as they are, PNGs re-encoded to JPEG in memory (clients
    send JPEG photos; a PNG would make decoding, not the model, the cost being measured)."""
    return [p.read_bytes() if p.suffix == ".jpg" else jpeg_bytes(Image.open(p)) for p in PHOTOS]


@dataclass(frozen=True)
class SizedJpeg:
    """One photo of the size test: its pixels as the report names them, and its bytes."""

    pixels: str
    data: bytes


def size_test_payloads() -> dict[str, SizedJpeg]:
    """The same photo as a 0.3-megapixel ("small") and a 12-megapixel ("large") JPEG."""
    photo = Image.open(SIZE_TEST_PHOTO).convert("RGB")
    return {
        which: SizedJpeg(f"{w}x{h}", jpeg_bytes(photo.resize((w, h), Image.Resampling.BICUBIC)))
        for which, (w, h) in JPEG_SIZES.items()
    }


#: How a setup's clients ask for one model: its name and the photos -> the requests they cycle.
RequestShape = Callable[[str, Sequence[bytes]], list[HttpRequest]]


@dataclass(frozen=True)
class ServedSetup:
    """One way of serving the models, measured at every concurrency of the run.

    ``archive`` says which archive of ``model_format`` is served: ``ours`` (archive.sh: our
    handler and model-config.yaml) or ``stock`` (the same serialized file behind TorchServe's
    ``image_classifier``, no model-config). ``config_text`` None is the project's
    config.properties."""

    label: str
    model_format: str
    archive: Literal["ours", "stock"] = "ours"
    config_text: str | None = None
    worker_environment: Mapping[str, str] = field(default_factory=lambda: WORKER_ENVIRONMENT)
    #: All models from one server, as ``make serve`` runs them (each measured while the others
    #: idle), or one server per model.
    together: bool = True
    requests: RequestShape = jpeg_predictions
    #: None: the run's concurrencies.
    concurrencies: tuple[int, ...] | None = None
    #: Time a 12-megapixel JPEG against a 0.3-megapixel one at concurrency 1.
    jpeg_sizes: bool = False
    #: Load every model of the (shared) server at once, after the sweep.
    all_busy: bool = False
    #: Measure the format's in-process limit again right after this setup.
    limit_again: bool = False
    #: As make serve runs it (own network namespace, doors forwarded) or as TorchServe's
    #: defaults run it (its addresses on loopback TCP, gRPC included).
    isolated: bool = True


def ours(model_format: str) -> str:
    """The label of our setup serving ``model_format``."""
    return f"ours-{model_format}"


def served_setups(formats: Sequence[str]) -> list[ServedSetup]:
    """The setups of a run, in the order they are measured and reported: ours for each format;
    right after ours-torchscript, the same archive asked over the Open Inference Protocol at the
    headline concurrency (measured next to the /predictions figures it is compared with), then
    the stock setup (it serves the same ``.pt``, each model alone with TorchServe's defaults: the
    kindest case for it)."""
    setups = []
    for fmt in formats:
        torchscript = fmt == "torchscript"
        setups.append(
            ServedSetup(ours(fmt), fmt, jpeg_sizes=torchscript, all_busy=True, limit_again=True)
        )
        if torchscript:
            v2 = ServedSetup(V2, fmt, requests=jpeg_v2_infer, concurrencies=(HEADLINE_CONCURRENCY,))
            stock = ServedSetup(
                STOCK,
                fmt,
                archive="stock",
                config_text=STOCK_CONFIG,
                worker_environment={},
                together=False,
                isolated=False,
            )
            setups += [v2, stock]
    return setups
