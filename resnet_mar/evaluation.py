"""Accuracy of archived models on a labelled folder: what an engineer measures before deploying a
format (int8, ONNX, OpenVINO) or a fine-tuned checkpoint, on their own data.

Each archive is evaluated as it will be served: in process with the handler's own decoding,
preprocessing and runtime read from the archive (model file, model-config.yaml, label map), and
through a running server when one answers. Accuracies carry 95% Wilson intervals; a model
compared with a baseline on the same images gets the paired difference, whose interval is much
narrower than the two accuracies' intervals suggest, and the classes that lose most.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from resnet_mar.client import ClientError, predict
from resnet_serving.serving_schema import ModelConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Standard normal quantile of a two-sided 95% interval.
Z95 = 1.959964
BATCH = 8


class EvaluationError(ValueError):
    """Data or archives that cannot be evaluated; says which and why."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str


@dataclass
class Accuracy:
    """Top-1 and top-5 accuracy of one model on ``images`` images, with 95% intervals."""

    images: int
    top1: float
    top1_interval: tuple[float, float]
    top5: float
    top5_interval: tuple[float, float]


@dataclass
class ModelEvaluation:
    model: str
    model_format: str
    in_process: Accuracy
    served: Accuracy | None = None
    #: Served top-1 answers that differ from the in-process ones, on the served images.
    served_disagreements: int | None = None
    #: Against the baseline: top-1 difference (this minus baseline) with its paired interval,
    #: and the classes whose top-1 accuracy drops most.
    difference: tuple[float, float, float] | None = None
    losing_classes: list[tuple[str, float]] = field(default_factory=list)


def labelled_images(data: Path, labels: list[str]) -> list[LabelledImage]:
    """The images of an ImageFolder (one subfolder per class, named by a label of the map or by
    its index) or of a CSV of ``path,label`` rows (paths relative to the CSV)."""
    if data.is_file():
        with open(data, newline="") as rows:
            found = [
                LabelledImage(data.parent / row[0], _label(row[1].strip(), labels, str(data)))
                for row in csv.reader(rows)
                if row and not row[0].startswith("#") and row[0] != "path"
            ]
    elif data.is_dir():
        found = [
            LabelledImage(image, _label(folder.name, labels, str(folder)))
            for folder in sorted(p for p in data.iterdir() if p.is_dir())
            for image in sorted(folder.iterdir())
            if image.suffix.lower() in IMAGE_SUFFIXES
        ]
    else:
        raise EvaluationError(f"{data} is neither a folder of class folders nor a CSV file")
    if not found:
        raise EvaluationError(f"{data} holds no labelled image ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _label(name: str, labels: list[str], where: str) -> str:
    if name in labels:
        return name
    if name.isdigit() and int(name) < len(labels):
        return labels[int(name)]
    raise EvaluationError(
        f"{where}: class {name!r} is neither a label of the model's label map nor an index "
        f"below {len(labels)}"
    )


def archive_labels(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as packed:
        names = json.loads(packed.read("index_to_name.json"))
    return [names[str(index)] for index in range(len(names))]


def in_process_top5(
    archive: Path, images: list[LabelledImage], labels: list[str]
) -> tuple[str, list[list[str]]]:
    """The archive's format and its top-5 label names (of ``labels``, its label map) per
    image, computed as its worker does."""
    from resnet_handler import decode_image, model_input
    from resnet_serving.cpu_budget import usable_cpus
    from resnet_serving.input_errors import BadInput
    from resnet_serving.model_runtimes import load_model

    with tempfile.TemporaryDirectory() as unpacked, zipfile.ZipFile(archive) as packed:
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        serialized = manifest["model"]["serializedFile"]
        packed.extract(serialized, unpacked)
        config = ModelConfig.from_dict(yaml.safe_load(packed.read("model-config.yaml")))
        settings = config.handler
        model = load_model(str(Path(unpacked) / serialized), settings.model_format, usable_cpus())
        top5 = []
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            try:
                crops = [decode_image(item.path.read_bytes(), settings) for item in chunk]
            except BadInput as err:
                raise EvaluationError(f"an image of {chunk[0].path.parent}: {err}") from None
            with torch.inference_mode():
                probabilities = model(model_input(crops, settings)).softmax(dim=1)
            indices = probabilities.topk(min(5, len(labels)), dim=1).indices.tolist()
            top5 += [[labels[i] for i in row] for row in indices]
    return settings.model_format, top5


def served_top5(url: str, model: str, images: list[LabelledImage]) -> list[list[str]]:
    return [list(predict(url, model, item.path, topk=5)) for item in images]


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound near 0 and 1, where the normal
    approximation leaves [0, 1]."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = (p + Z95**2 / (2 * trials)) / (1 + Z95**2 / trials)
    half = (Z95 / (1 + Z95**2 / trials)) * math.sqrt(
        p * (1 - p) / trials + Z95**2 / (4 * trials**2)
    )
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy(top5: list[list[str]], images: list[LabelledImage]) -> Accuracy:
    hits1 = sum(row[0] == item.label for row, item in zip(top5, images, strict=True))
    hits5 = sum(item.label in row for row, item in zip(top5, images, strict=True))
    n = len(images)
    return Accuracy(n, hits1 / n, wilson(hits1, n), hits5 / n, wilson(hits5, n))


def paired_difference(
    top5: list[list[str]], baseline: list[list[str]], images: list[LabelledImage]
) -> tuple[float, float, float]:
    """Top-1 accuracy of ``top5`` minus the baseline's on the same images, with the 95%
    interval of the paired differences (each image: +1, 0 or -1)."""
    return mean_with_interval(
        [
            (row[0] == item.label) - (base[0] == item.label)
            for row, base, item in zip(top5, baseline, images, strict=True)
        ]
    )


def mean_with_interval(values: list[float]) -> tuple[float, float, float]:
    """The mean of ``values`` and its 95% normal interval (sample standard deviation): for
    paired differences, which cancel what both models get right or wrong alike."""
    found = np.asarray(values, dtype=np.float64)
    mean = float(found.mean())
    spread = float(found.std(ddof=1)) if len(found) > 1 else 0.0
    half = Z95 * spread / math.sqrt(len(found))
    return mean, mean - half, mean + half


def losing_classes(
    top5: list[list[str]], baseline: list[list[str]], images: list[LabelledImage], count: int = 5
) -> list[tuple[str, float]]:
    """The classes whose top-1 accuracy drops most against the baseline (drops only)."""
    drops: dict[str, list[int]] = {}
    for row, base, item in zip(top5, baseline, images, strict=True):
        drops.setdefault(item.label, []).append((base[0] == item.label) - (row[0] == item.label))
    ranked = sorted(((label, sum(d) / len(d)) for label, d in drops.items()), key=lambda x: -x[1])
    return [(label, round(drop, 4)) for label, drop in ranked[:count] if drop > 0]


def report(evaluations: list[ModelEvaluation], data: Path, images: int, served_note: str) -> str:
    """The Markdown table of results/eval/report.md."""

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    def cell(found: Accuracy | None, which: str) -> str:
        if found is None:
            return "-"
        low, high = getattr(found, f"{which}_interval")
        return f"{pct(getattr(found, which))} [{pct(low)}, {pct(high)}]"

    lines = [
        f"# Accuracy on {data} ({images} images)",
        "",
        "95% Wilson intervals in brackets. " + served_note,
        "",
        "| model | format | top-1 | top-5 | served top-1 (images) | served top-5 | served top-1 "
        "answers that differ |",
        "|---|---|---|---|---|---|---:|",
    ]
    for found in evaluations:
        served_images = f" ({found.served.images})" if found.served else ""
        lines.append(
            f"| {found.model} | {found.model_format} | {cell(found.in_process, 'top1')} | "
            f"{cell(found.in_process, 'top5')} | {cell(found.served, 'top1')}{served_images} | "
            f"{cell(found.served, 'top5')} | "
            f"{'-' if found.served_disagreements is None else found.served_disagreements} |"
        )
    compared = [found for found in evaluations if found.difference is not None]
    if compared:
        lines += [
            "",
            "| model | top-1 minus the baseline's [paired 95%] | classes that lose most |",
            "|---|---|---|",
        ]
        for found in compared:
            mean, low, high = found.difference or (0.0, 0.0, 0.0)
            losers = ", ".join(f"{label} (-{pct(drop)})" for label, drop in found.losing_classes)
            lines.append(
                f"| {found.model} | {100 * mean:+.1f} points [{100 * low:+.1f}, "
                f"{100 * high:+.1f}] | {losers or 'none'} |"
            )
    return "\n".join(lines) + "\n"


def plot(evaluations: list[ModelEvaluation], path: Path) -> None:
    """Top-1 and top-5 per model with their intervals, in process and served."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.8 * len(evaluations)), 4))
    bars = [("in process", "in_process", 0), ("served", "served", 1)]
    width = 0.2
    for metric_index, metric in enumerate(("top1", "top5")):
        for name, attribute, offset in bars:
            xs, ys, errors = [], [], [[], []]
            for position, found in enumerate(evaluations):
                result = getattr(found, attribute)
                if result is None:
                    continue
                value, (low, high) = getattr(result, metric), getattr(result, f"{metric}_interval")
                xs.append(position + (2 * metric_index + offset - 1.5) * width)
                ys.append(100 * value)
                errors[0].append(max(100 * (value - low), 0.0))  # never below 0 by a rounding
                errors[1].append(max(100 * (high - value), 0.0))
            if xs:
                ax.bar(xs, ys, width, yerr=errors, capsize=3, label=f"{metric}, {name}")
    ax.set_xticks(range(len(evaluations)), [f.model for f in evaluations])
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(
    data: Path,
    archives: list[Path],
    out: Path,
    *,
    url: str | None = None,
    sample: int | None = None,
    baseline: str | None = None,
) -> list[ModelEvaluation]:
    """Evaluate every archive on ``data``; write report.md, eval.json and accuracy.png in
    ``out``. Served accuracy on the first ``sample`` images (all when None), when ``url``
    answers."""
    evaluations, top5s, evaluated = [], {}, {}
    images: list[LabelledImage] = []
    served_note = "Served accuracy not measured (no server address)."
    for archive in archives:
        name = archive.stem
        labels = archive_labels(archive)
        images = labelled_images(data, labels)
        print(f"{name}: {len(images)} images in process ...", flush=True)
        model_format, top5 = in_process_top5(archive, images, labels)
        top5s[name], evaluated[name] = top5, images
        found = ModelEvaluation(name, model_format, accuracy(top5, images))
        if url:
            chosen = images[: sample or len(images)]
            print(f"{name}: {len(chosen)} images through {url} ...", flush=True)
            try:
                served = served_top5(url, name, chosen)
            except ClientError as err:
                served_note = f"Served accuracy not measured: {err}."
            else:
                found.served = accuracy(served, chosen)
                found.served_disagreements = sum(
                    s[0] != p[0] for s, p in zip(served, top5, strict=False)
                )
                served_note = (
                    f"Served through {url}, on {len(chosen)} of the {len(images)} images "
                    f"({'all' if len(chosen) == len(images) else 'the first, in file order'})."
                )
        evaluations.append(found)
    if baseline:
        if baseline not in top5s:
            raise EvaluationError(f"baseline {baseline!r} is not among the evaluated models")
        images = evaluated[baseline]
        for found in evaluations:
            if found.model != baseline and evaluated[found.model] != images:
                raise EvaluationError(
                    f"{found.model} and {baseline} read {data} with different label maps: "
                    "their accuracies cannot be paired"
                )
            if found.model != baseline:
                found.difference = paired_difference(top5s[found.model], top5s[baseline], images)
                found.losing_classes = losing_classes(top5s[found.model], top5s[baseline], images)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report(evaluations, data, len(images), served_note))
    document: dict[str, Any] = {
        "data": str(data),
        "images": len(images),
        "baseline": baseline,
        "models": [asdict(found) for found in evaluations],
    }
    (out / "eval.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(evaluations, out / "accuracy.png")
    return evaluations
