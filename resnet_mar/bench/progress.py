"""One line per step of the run, stamped with the time since it started: a run takes minutes,
and a stalled step must show where it stalled."""

from __future__ import annotations

import time

_STARTED = time.monotonic()


def elapsed_s() -> float:
    """Seconds since the run started (since this module was imported)."""
    return time.monotonic() - _STARTED


def progress(message: str) -> None:
    elapsed = int(elapsed_s())
    print(f"[bench {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)
