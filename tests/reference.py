"""The in-process reference a served answer must equal, computed independently of the handler:
the archive's own serialized model, torchvision's transforms, and the archive's label map."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import requests
import torch
from PIL import Image
from torchvision.transforms._presets import ImageClassification

STANDARD_IMAGENET = ImageClassification(crop_size=224)  # resize 256, ImageNet mean/std


def archive_member(mar: Path, name: str) -> bytes:
    with zipfile.ZipFile(mar) as archive:
        return archive.read(name)


def reference_answer(
    model: torch.jit.ScriptModule,
    labels: dict[str, str],
    image: bytes | Image.Image,
    topk: int = 5,
    transforms: ImageClassification = STANDARD_IMAGENET,
) -> dict[str, float]:
    """Encoded bytes are read with Pillow's plain ``convert("RGB")``; a picture is used as is."""
    picture = image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image))
    picture = picture.convert("RGB")
    with torch.inference_mode():
        probabilities = model(transforms(picture).unsqueeze(0)).softmax(dim=1)[0]
    scores, indices = probabilities.topk(min(topk, len(labels)))
    answer: dict[str, float] = {}
    for score, index in zip(scores.tolist(), indices.tolist(), strict=True):
        answer.setdefault(labels[str(index)], score)
    return answer


def load_archive_reference(mar: Path, serialized: str) -> tuple[torch.jit.ScriptModule, dict]:
    """The model and label map exactly as packed in ``mar``."""
    model = torch.jit.load(io.BytesIO(archive_member(mar, serialized)), map_location="cpu")
    labels = json.loads(archive_member(mar, "index_to_name.json"))
    return model.eval(), labels


def assert_same_answer(
    served: dict[str, float], expected: dict[str, float], tolerance: float = 1e-4
) -> None:
    """Same labels in the same order, probabilities within ``tolerance``."""
    assert list(served) == list(expected), f"labels differ: {served} vs {expected}"
    for label, probability in expected.items():
        assert abs(served[label] - probability) <= tolerance, (label, served[label], probability)


def reference_top(
    model: torch.jit.ScriptModule,
    labels: dict[str, str],
    image: bytes,
    topk: int = 5,
    transforms: ImageClassification = STANDARD_IMAGENET,
) -> list[tuple[str, float]]:
    """The best ``topk`` (label, probability) pairs, every row kept (repeated names too): what
    an Open Inference answer's labels and probabilities hold for one image."""
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    with torch.inference_mode():
        probabilities = model(transforms(picture).unsqueeze(0)).softmax(dim=1)[0]
    scores, indices = probabilities.topk(min(topk, len(labels)))
    return [(labels[str(i)], s) for s, i in zip(scores.tolist(), indices.tolist(), strict=True)]


def assert_served_like_reference(
    inference: str, reference: tuple, photo: bytes, model: str = "resnet18"
) -> None:
    """PUT ``photo`` to ``model`` at the ``inference`` address: its answer is the in-process
    reference's (``reference``: the archive's model and label map)."""
    answer = requests.put(f"{inference}/predictions/{model}", data=photo, timeout=120)
    assert_same_answer(answer.json(), reference_answer(*reference, photo))
