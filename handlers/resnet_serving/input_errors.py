"""The one error type the handler answers users with: an HTTP 4xx and a JSON body (or a 501
for an explanation the worker cannot give, explanations.py, and a 503 for one that must wait,
explanation_turns.py).

Every way a request can be wrong maps to one of these, so a bad request is refused alone and
never fails its batch or its worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class BadInput(Exception):
    """A request the handler refuses; ``body()`` is what a /predictions client receives.
    (Not frozen: raising an exception sets attributes on it.)

    ``position``: the 0-based index of the image at fault in a request carrying several (KServe
    v1 instances, Open Inference data), None when the request as a whole is at fault.
    ``retry_after_s``: for a refusal that passes (503), when to ask again (Retry-After)."""

    status: int
    kind: str
    message: str
    position: int | None = None
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}

    def at(self, position: int) -> BadInput:
        """The same refusal, pinned on the image at ``position``."""
        return dataclasses.replace(self, position=position)


def bad_request(kind: str, message: str) -> BadInput:
    return BadInput(400, kind, message)
