"""A small closed-loop HTTP load generator for ``PUT /predictions/<model>``.

Why not ``requests`` in threads, or locust: the client shares the machine's two cores with the
server it measures, so every cycle it spends is taken from the server. This one is one asyncio
loop with raw HTTP/1.1 keep-alive connections, one coroutine per concurrent client: per request
it writes one header block and the body, and reads one response, nothing else.

Closed loop: each client sends its next request as soon as the previous answer arrived, so
``concurrency`` requests are always in flight and throughput is what the server sustains.

One point runs in three phases:

* warm-up: at least ``warmup_s``, and until every client has had one answer (a closed loop with
  ``c`` clients only reaches its steady queue length after the first round trip), at most
  ``max_warmup_s``;
* the window (``duration_s``): throughput and latency percentiles count the answers that
  arrive inside it;
* drain: clients stop sending and wait for their last answer, so the next point starts on an
  idle server.

Errors count over all three phases: any status other than 200, a dropped connection, or no
answer within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Percentiles reported for every point.
PERCENTILES = (50, 90, 99)


@dataclass
class _Shared:
    """State every client of one point sees: when the window opens and closes."""

    concurrency: int
    window_start: float = float("inf")
    window_end: float = float("inf")
    stop: bool = False
    answered_once: set[int] = field(default_factory=set)
    everyone_answered: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Record:
    end: float
    latency_s: float
    status: int


@dataclass(frozen=True)
class LoadPoint:
    """One measured point: ``concurrency`` closed-loop clients for one window."""

    concurrency: int
    window_s: float
    warmup_s: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: int
    error_kinds: dict[str, int]
    client_cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "window_s": round(self.window_s, 3),
            "warmup_s": round(self.warmup_s, 3),
            "requests": self.requests,
            "throughput_rps": round(self.throughput_rps, 3),
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "client_cpu_s": round(self.client_cpu_s, 3),
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN for none)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def _request_head(host: str, port: int, path: str, body_len: int) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {body_len}\r\nConnection: keep-alive\r\n\r\n"
    ).encode("ascii")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response: its status and whether the server keeps the connection open.
    The body is read (and dropped) so that the next response starts where it should."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    keep_alive = headers.get("connection", "").lower() != "close"
    return status, keep_alive


async def _client(
    index: int,
    shared: _Shared,
    url: str,
    path: str,
    payloads: Sequence[bytes],
    timeout_s: float,
    records: list[_Record],
    failures: dict[str, int],
) -> None:
    """One closed-loop client on its own keep-alive connection; reconnects after a drop."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    heads = [_request_head(host, port, path, len(body)) for body in payloads]
    # Clients start at different photos so that a batch holds a mix of them.
    order = itertools.islice(itertools.cycle(range(len(payloads))), index % len(payloads), None)
    writer: asyncio.StreamWriter | None = None
    try:
        for which in order:
            if shared.stop:
                return
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(heads[which])
                writer.write(payloads[which])
                status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
                kind = type(err).__name__
                failures[kind] = failures.get(kind, 0) + 1
                status, keep_alive = 0, False
            end = time.perf_counter()
            records.append(_Record(end, end - start, status))
            if not keep_alive and writer is not None:
                writer.close()
                writer = None
            shared.answered_once.add(index)
            if len(shared.answered_once) == shared.concurrency:
                shared.everyone_answered.set()
    finally:
        if writer is not None:
            writer.close()


async def _run_point(
    url: str,
    model: str,
    payloads: Sequence[bytes],
    concurrency: int,
    *,
    duration_s: float,
    warmup_s: float,
    max_warmup_s: float,
    timeout_s: float,
) -> LoadPoint:
    shared = _Shared(concurrency)
    records: list[_Record] = []
    failures: dict[str, int] = {}
    began = time.perf_counter()
    tasks = [
        asyncio.create_task(
            _client(i, shared, url, f"/predictions/{model}", payloads, timeout_s, records, failures)
        )
        for i in range(concurrency)
    ]
    await asyncio.sleep(warmup_s)
    remaining = max(0.0, max_warmup_s - (time.perf_counter() - began))
    # Past max_warmup_s the window opens anyway; the recorded warm-up says how long it was.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(shared.everyone_answered.wait(), remaining)
    shared.window_start = time.perf_counter()
    cpu_window_start = time.process_time()
    await asyncio.sleep(duration_s)
    shared.window_end = time.perf_counter()
    cpu_window = time.process_time() - cpu_window_start
    shared.stop = True
    await asyncio.gather(*tasks)

    inside = [r for r in records if shared.window_start <= r.end < shared.window_end]
    good = sorted(r.latency_s * 1000 for r in inside if r.status == 200)
    window = shared.window_end - shared.window_start
    errors = [r for r in records if r.status != 200]
    kinds = dict(failures)
    for record in errors:
        if record.status:
            kinds[f"HTTP {record.status}"] = kinds.get(f"HTTP {record.status}", 0) + 1
    latency = {f"p{p}": percentile(good, p) for p in PERCENTILES}
    latency["mean"] = statistics.fmean(good) if good else float("nan")
    return LoadPoint(
        concurrency=concurrency,
        window_s=window,
        warmup_s=shared.window_start - began,
        requests=len(good),
        throughput_rps=len(good) / window,
        latency_ms=latency,
        errors=len(errors),
        error_kinds=kinds,
        client_cpu_s=cpu_window,
    )


def run_point(
    url: str,
    model: str,
    payloads: Sequence[bytes],
    concurrency: int,
    *,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    max_warmup_s: float = 40.0,
    timeout_s: float = 120.0,
) -> LoadPoint:
    """Measure one point against ``url`` (the inference address); see the module docstring."""
    if not payloads:
        raise ValueError("run_point needs at least one payload")
    return asyncio.run(
        _run_point(
            url,
            model,
            payloads,
            concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            max_warmup_s=max_warmup_s,
            timeout_s=timeout_s,
        )
    )
