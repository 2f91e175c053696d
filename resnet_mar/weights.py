"""Where a model's weights, class names and preprocessing come from.

Three sources, chosen by the ``WEIGHTS`` value:

* a torchvision weights entry (``DEFAULT``, ``IMAGENET1K_V2``, ...): torchvision's weights API,
  which reads the torch hub cache first and downloads into it otherwise; the entry carries its own
  categories and transforms, so the preprocessing is read from it, never restated here;
* ``none``: seeded, untrained weights, reproducible and recorded as untrained;
* a path to a ``state_dict`` file with a label map: a user's fine-tuned checkpoint.

Untrained weights and checkpoints use torchvision's standard ImageNet preprocessing
(``ImageClassification``'s defaults: resize 256, crop 224, ImageNet mean and std).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from resnet_mar.architectures import build_untrained, weights_enum
from resnet_mar.labels import imagenet_categories, read_label_map
from resnet_serving.serving_schema import Preprocessing

UNTRAINED = "none"


class WeightsError(ValueError):
    """Raised when the requested weights cannot be loaded; the message says what to do."""


def preprocessing_of(transforms: ImageClassification) -> Preprocessing:
    """The serving schema's description of a weights entry's ``transforms()``."""
    return Preprocessing(
        resize_size=int(transforms.resize_size[0]),
        crop_size=int(transforms.crop_size[0]),
        mean=tuple(float(m) for m in transforms.mean),
        std=tuple(float(s) for s in transforms.std),
        interpolation=InterpolationMode(transforms.interpolation).value,
    )


def reference_transforms(preprocessing: Preprocessing) -> ImageClassification:
    """The torchvision transform a description stands for (the in-process reference)."""
    return ImageClassification(
        crop_size=preprocessing.crop_size,
        resize_size=preprocessing.resize_size,
        mean=preprocessing.mean,
        std=preprocessing.std,
        interpolation=InterpolationMode(preprocessing.interpolation),
    )


STANDARD_IMAGENET = preprocessing_of(ImageClassification(crop_size=224))


@dataclass
class LoadedWeights:
    """A model with its weights in place, plus what the archive must record about them."""

    model: torch.nn.Module
    categories: list[str]
    preprocessing: Preprocessing
    provenance: dict[str, Any]


def load_weights(
    arch: str, spec: str, *, labels: Path | None = None, seed: int = 0
) -> LoadedWeights:
    """Build ``arch`` with the weights named by ``spec`` (see the module docstring)."""
    if spec.lower() == UNTRAINED:
        if labels is not None:
            raise WeightsError("LABELS goes with a checkpoint file in WEIGHTS, not WEIGHTS=none")
        return _untrained(arch, seed)
    if spec.endswith((".pt", ".pth", ".bin")) or Path(spec).exists():
        return _checkpoint(arch, Path(spec), labels)
    if labels is not None:
        raise WeightsError("LABELS goes with a checkpoint file in WEIGHTS, not a torchvision entry")
    return _torchvision_entry(arch, spec)


def _untrained(arch: str, seed: int) -> LoadedWeights:
    torch.manual_seed(seed)
    return LoadedWeights(
        model=build_untrained(arch),
        categories=imagenet_categories(),
        preprocessing=STANDARD_IMAGENET,
        provenance={"source": "untrained", "trained": False, "seed": seed},
    )


def _torchvision_entry(arch: str, spec: str) -> LoadedWeights:
    enum = weights_enum(arch)
    try:
        entry = enum[spec]
    except KeyError:
        valid = ", ".join(enum.__members__)
        raise WeightsError(
            f"{arch} has no weights entry {spec!r}; valid: {valid}, none, or a checkpoint path"
        ) from None
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    try:
        state_dict = entry.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # urllib, ssl and socket errors all mean "not reachable"
        raise WeightsError(
            f"cannot load {enum.__name__}.{entry.name}: {cache_file} is not in the torch hub cache "
            f"and downloading {entry.url} failed ({type(err).__name__}: {err}). Put the file at "
            f"that path (TORCH_HOME={cache_file.parents[2]}) or build untrained with WEIGHTS=none."
        ) from err
    model = build_untrained(arch, num_classes=len(entry.meta["categories"]))
    model.load_state_dict(state_dict)
    return LoadedWeights(
        model=model,
        categories=list(entry.meta["categories"]),
        preprocessing=preprocessing_of(entry.transforms()),
        provenance={
            "source": "torchvision",
            "trained": True,
            "entry": f"{enum.__name__}.{entry.name}",
            "url": entry.url,
            "cache_file": str(cache_file),
            "sha256": sha256_of(cache_file) if cache_file.exists() else None,
        },
    )


def _checkpoint(arch: str, path: Path, labels: Path | None) -> LoadedWeights:
    if labels is None:
        raise WeightsError(
            f"WEIGHTS={path} is a checkpoint: also give LABELS=path/to/labels.json, "
            "the label map that sets its number of classes"
        )
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    categories = read_label_map(labels)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"checkpoint {path} cannot be read as a state_dict: {err}") from err
    state_dict = _unwrap_state_dict(loaded, path)
    model = build_untrained(arch, num_classes=len(categories))
    _check_compatible(model.state_dict(), state_dict, arch, path, labels)
    model.load_state_dict(state_dict)
    return LoadedWeights(
        model=model,
        categories=categories,
        preprocessing=STANDARD_IMAGENET,
        provenance={
            "source": "checkpoint",
            "trained": True,
            "checkpoint": str(path),
            "sha256": sha256_of(path),
            "labels": str(labels),
        },
    )


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or the usual training wrappers, and DataParallel's prefix."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise WeightsError(f"checkpoint {path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _check_compatible(
    expected: dict[str, torch.Tensor],
    given: dict[str, torch.Tensor],
    arch: str,
    path: Path,
    labels: Path,
) -> None:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs {arch} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_preview(mismatched)}")
    if problems:
        raise WeightsError(
            f"checkpoint {path} does not fit {arch} with {expected['fc.bias'].shape[0]} classes "
            f"(from {labels}): " + "; ".join(problems)
        )


def _preview(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
