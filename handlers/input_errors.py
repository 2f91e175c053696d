"""The one error type the handler answers users with: an HTTP 4xx and a JSON body.

Every way a request can be wrong maps to one of these, so a bad request is refused alone and
never fails its batch or its worker.
"""

from __future__ import annotations


class BadInput(Exception):
    """A request the handler refuses; ``body()`` is what the client receives."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}


def bad_request(kind: str, message: str) -> BadInput:
    return BadInput(400, kind, message)
