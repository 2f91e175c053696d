"""When an explanation may run, so that a flood of them cannot starve the predictions.

An explanation holds the worker (all its cores) for ``ig_steps`` forward and backward passes,
and every request batched or queued behind it waits that long. So a worker explains at most one
image per batch, and explanations take at most ``explanation_share`` of its time: after one
that ran ``t`` seconds, the next waits ``t * (1 - share) / share``. The others are answered at
once with 503 and a Retry-After, before anything is decoded, and predictions behind a flood wait
at most one explanation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from resnet_serving.input_errors import BadInput

BUSY = 503


class ExplanationTurns:
    """One worker's explanation schedule; the worker handles one batch at a time, so no lock."""

    def __init__(self, share: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self._clock = clock
        self._next_turn = -math.inf

    def open(self) -> bool:
        """Whether an explanation may run now (the first of a batch; the others wait)."""
        return self._clock() >= self._next_turn

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Around an explanation: the next one waits for the others' share of its time."""
        started = self._clock()
        try:
            yield
        finally:
            ended = self._clock()
            self._next_turn = ended + (ended - started) * (1 - self.share) / self.share

    def busy(self) -> BadInput:
        """The answer to an explanation that does not get its turn."""
        seconds = max(math.ceil(max(self._next_turn - self._clock(), 0.0)), 1)
        return BadInput(
            BUSY,
            "ExplanationsBusy",
            f"this worker explains one image at a time and spends at most "
            f"{self.share:.0%} of its time on explanations, to keep predictions fast: "
            f"retry in {seconds} s",
            retry_after_s=seconds,
        )
