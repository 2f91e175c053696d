"""The compute gate: the models of one server take turns, each using all the cores.

Every model is built with as many intra-op threads as the machine has cores, so a model asked
alone runs as fast as the machine allows, whatever else the server holds. Two models computing
at once would then run twice as many threads as cores, which is what makes TorchServe's stock
set-up collapse under load. The gate rules that out: a worker holds it while it decodes and runs
a batch, so batches of different models run one after the other, never side by side.

It is an advisory lock (``flock``) on a file in the temporary folder. TorchServe keeps one server
per ``TMPDIR`` and its workers inherit it, so all the models of a server share one gate; the
kernel releases it if a worker dies while holding it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from types import TracebackType


def gate_path() -> str:
    """Per user, so that another user's server on the same host cannot block this one."""
    return os.path.join(tempfile.gettempdir(), f"resnet_mar_compute_{os.getuid()}.lock")


class ComputeGate:
    """``with gate:`` runs the block while no other model of the server computes."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or gate_path()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> ComputeGate:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
