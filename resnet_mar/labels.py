"""Label maps: the ImageNet one and users' own.

The repository's ``index_to_name.json`` is the ImageNet label map every archive of an untrained
ImageNet model ships (``make labels`` writes it from torchvision's weights metadata, and a test
keeps the two equal); a torchvision weights entry brings its own categories, a checkpoint its
LABELS file. TorchServe reads ``index_to_name.json`` from the archive; the handler reads the
same file. Both ``{"0": "tench"}`` and ``{"0": ["n01440764", "tench"]}`` are accepted, as
TorchServe accepts them, and a map is checked here, at build time, so a gap or a bad entry never
reaches a request.
"""

from __future__ import annotations

import json
from pathlib import Path

from torchvision.models import ResNet50_Weights


class LabelMapError(ValueError):
    """Raised for a label map that cannot serve as a model's class list."""


#: The project's ImageNet label map (the one source of untrained models' class names).
IMAGENET_LABELS = Path(__file__).resolve().parent.parent / "index_to_name.json"


def torchvision_imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, in class-index order, from torchvision's weights metadata
    (what ``make labels`` writes to :data:`IMAGENET_LABELS`)."""
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_categories() -> list[str]:
    """The ImageNet class names an untrained model is archived with."""
    return read_label_map(IMAGENET_LABELS)


def label_map_json(categories: list[str]) -> str:
    """The ``index_to_name.json`` text for a class list, index order preserved."""
    return json.dumps({str(i): name for i, name in enumerate(categories)}, indent=2) + "\n"


def write_label_map(categories: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(label_map_json(categories))
    return path


def read_label_map(path: Path) -> list[str]:
    """Class names in index order; any gap, duplicate index or non-text name is an error."""
    try:
        mapping = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise LabelMapError(f"label map {path} does not exist") from err
    except json.JSONDecodeError as err:
        raise LabelMapError(f"label map {path} is not valid JSON: {err}") from err
    if not isinstance(mapping, dict) or not mapping:
        raise LabelMapError(f'label map {path} must be a non-empty object {{"0": "name", ...}}')
    names: dict[int, str] = {}
    for key, value in mapping.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise LabelMapError(f"label map {path}: key {key!r} is not a class index")
        name = value[-1] if isinstance(value, list) and value else value
        if not isinstance(name, str) or not name:
            raise LabelMapError(f"label map {path}: class {key} has no name (got {value!r})")
        names[int(key)] = name
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise LabelMapError(
            f"label map {path}: indices must run 0..{len(names) - 1} without gaps; "
            f"missing {missing[:10]}"
        )
    return [names[i] for i in range(len(names))]
