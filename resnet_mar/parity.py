"""The build-time check that a compiled model computes what its eager twin computes.

Scripting, freezing and exporting all rewrite the graph (freezing folds batch norm into the
convolutions, for one); a silent change there would be served to every user, so a build stops
unless the compiled model gives the same top-5 classes and close logits on several inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

#: Logits of untrained deep ResNets reach the hundreds, so the tolerance scales with them.
RELATIVE_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """Raised when a compiled model disagrees with the eager model."""


@dataclass(frozen=True)
class ParityReport:
    inputs: int
    batch_sizes: list[int]
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    top5_identical: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_inputs(crop_size: int, seed: int = 1234) -> list[torch.Tensor]:
    """Several normalised-image-like batches of the sizes a server hands a model."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, crop_size, crop_size, generator=generator) for n in (1, 3, 8)]


def check_parity(eager: Forward, compiled: Forward, inputs: list[torch.Tensor]) -> ParityReport:
    """Compare ``compiled`` against ``eager``; raise :class:`ParityError` on any disagreement."""
    max_diff = 0.0
    max_logit = 0.0
    top5_identical = True
    with torch.inference_mode():
        for batch in inputs:
            expected = eager(batch)
            actual = compiled(batch)
            if actual.shape != expected.shape:
                raise ParityError(f"output shape {tuple(actual.shape)} != {tuple(expected.shape)}")
            max_diff = max(max_diff, (actual - expected).abs().max().item())
            max_logit = max(max_logit, expected.abs().max().item())
            k = min(5, expected.shape[1])
            top5_identical &= torch.equal(actual.topk(k).indices, expected.topk(k).indices)
    tolerance = RELATIVE_TOLERANCE * max(1.0, max_logit)
    report = ParityReport(
        inputs=sum(b.shape[0] for b in inputs),
        batch_sizes=[b.shape[0] for b in inputs],
        max_abs_diff=max_diff,
        max_abs_logit=max_logit,
        tolerance=tolerance,
        top5_identical=top5_identical,
    )
    if not top5_identical or max_diff > tolerance:
        raise ParityError(
            f"compiled model disagrees with eager: top-5 identical={top5_identical}, "
            f"max |logit difference|={max_diff:.3g} (tolerance {tolerance:.3g})"
        )
    return report
