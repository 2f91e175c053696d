"""The build-time check that a compiled model computes what its eager twin computes.

Scripting, tracing, freezing and exporting all rewrite the graph (freezing folds batch norm into
the convolutions, for one; a trace keeps only the branches its example input took); a silent
change there would be served to every user, so a build stops unless the compiled model gives the
same top-5 classes and close logits on every input of the check.

The inputs are real photos (what a server sees) and random normal images (values photos never
take), at the batch sizes and in the memory layouts the handler feeds: each photo alone, so a
branch taken by one picture cannot hide in a batch; batches of 3, 8 and 16, the last over the
server's batch size (a KServe request may carry 32 images, and a TorchServe batch is one forward
pass), channels-last where the handler uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

#: Logits of untrained deep ResNets reach the hundreds, so the tolerance scales with them.
RELATIVE_TOLERANCE = 1e-4
#: Batch sizes checked beyond each photo alone.
PHOTO_BATCHES = (3, 8)
RANDOM_BATCHES = (1, 3, 16)


class ParityError(RuntimeError):
    """Raised when a compiled model disagrees with the eager model."""


@dataclass(frozen=True)
class ParityInput:
    """One batch the compiled model must agree on, and what it holds (for the provenance)."""

    source: str
    batch: torch.Tensor

    def describe(self) -> dict[str, Any]:
        channels_last = self.batch.shape[0] > 1 and self.batch.is_contiguous(
            memory_format=torch.channels_last
        )
        return {
            "source": self.source,
            "batch_size": self.batch.shape[0],
            "layout": "channels_last" if channels_last else "nchw",
        }


@dataclass(frozen=True)
class ParityReport:
    inputs: int
    checked_on: list[dict[str, Any]]
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top5_identical: bool


def in_layout(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The batch as the handler would hand it over: channels-last from 3 images up when the
    model's format takes it (TorchScript), NCHW otherwise. Never another layout: torchvision's
    transform leaves a photo strided as its pixels were, and an AOTInductor package computes
    wrong logits from that, silently (measured: top-5 differs)."""
    if channels_last and batch.shape[0] >= 3:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch.contiguous()


def photo_inputs(photos: dict[str, torch.Tensor], channels_last: bool) -> list[ParityInput]:
    """Each photo alone, then batches of :data:`PHOTO_BATCHES` cycling through them (a repeated
    photo is flipped left-right, so every image of a batch differs)."""
    names = list(photos)
    found = [
        ParityInput(f"photo {name}", in_layout(photos[name].unsqueeze(0), channels_last))
        for name in names
    ]
    for size in PHOTO_BATCHES:
        images = [
            photos[names[i % len(names)]].flip(-1) if i >= len(names) else photos[names[i]]
            for i in range(size)
        ]
        used = ", ".join(names[: min(size, len(names))])
        flipped = " and flipped" if size > len(names) else ""
        found.append(
            ParityInput(f"photos {used}{flipped}", in_layout(torch.stack(images), channels_last))
        )
    return found


def random_inputs(crop_size: int, channels_last: bool, seed: int = 1234) -> list[ParityInput]:
    """Batches of :data:`RANDOM_BATCHES` standard normal images (roughly the range of normalised
    pixels, but values and branches photos may never reach)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        ParityInput(
            f"random normal (seed {seed})",
            in_layout(torch.randn(n, 3, crop_size, crop_size, generator=generator), channels_last),
        )
        for n in RANDOM_BATCHES
    ]


def parity_inputs(
    photos: dict[str, torch.Tensor], crop_size: int, channels_last: bool
) -> list[ParityInput]:
    """What the build checks every compiled model on: the photos, then random images."""
    return photo_inputs(photos, channels_last) + random_inputs(crop_size, channels_last)


def check_parity(eager: Forward, compiled: Forward, inputs: list[ParityInput]) -> ParityReport:
    """Compare ``compiled`` against ``eager``; raise :class:`ParityError` on any disagreement,
    naming the inputs it was found on."""
    diffs: list[float] = []
    logits: list[float] = []
    top5: list[bool] = []
    with torch.inference_mode():
        for item in inputs:
            expected = eager(item.batch)
            actual = compiled(item.batch)
            if actual.shape != expected.shape:
                raise ParityError(
                    f"output shape {tuple(actual.shape)} != {tuple(expected.shape)} on "
                    f"{item.source}"
                )
            diffs.append((actual - expected).abs().max().item())
            logits.append(expected.abs().max().item())
            k = min(5, expected.shape[1])
            top5.append(torch.equal(actual.topk(k).indices, expected.topk(k).indices))
    tolerance = RELATIVE_TOLERANCE * max([1.0, *logits])
    failed = [
        f"{item.source} (batch {item.batch.shape[0]}: "
        + ("top-5 differs" if not same else f"|diff| {diff:.3g}")
        + ")"
        for item, diff, same in zip(inputs, diffs, top5, strict=True)
        if not same or diff > tolerance
    ]
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise ParityError(
            f"compiled model disagrees with eager: top-5 identical={all(top5)}, "
            f"max |logit difference|={max(diffs, default=0.0):.3g} (tolerance {tolerance:.3g}), on "
            f"{'; '.join(failed[:3])}{more}"
        )
    return ParityReport(
        inputs=sum(item.batch.shape[0] for item in inputs),
        checked_on=[item.describe() for item in inputs],
        max_abs_diff=max(diffs, default=0.0),
        max_abs_logit=max(logits, default=0.0),
        tolerance=tolerance,
        top5_identical=True,
    )
