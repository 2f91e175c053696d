"""A small closed-loop HTTP load generator: ``PUT /predictions/<model>`` with JPEG bytes by default,
any request a served protocol needs otherwise (:class:`HttpRequest`; :func:`jpeg_v2_infer` is the
Open Inference Protocol's).

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
answer within ``timeout_s``. A response framed by ``Content-Length`` or by chunks keeps its
connection; one with ``Connection: close`` is read to its end and the client reconnects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpRequest:
    """One request as a served protocol shapes it. The client adds ``Host``, ``Content-Length``
    and keep-alive, so that a protocol variant (another path, a JSON body) is only data."""

    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, host: str, port: int) -> bytes:
        """The bytes on the wire, built once per point (not per request: the client's CPU is
        taken from the server it measures)."""
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: {host}:{port}",
            *(f"{name}: {value}" for name, value in self.headers),
            f"Content-Length: {len(self.body)}",
            "Connection: keep-alive",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.body


def jpeg_predictions(model: str, photos: Sequence[bytes]) -> list[HttpRequest]:
    """TorchServe's own inference API: the raw JPEG bytes as the body of
    ``PUT /predictions/<model>``, one request per photo."""
    headers = (("Content-Type", "image/jpeg"),)
    return [HttpRequest("PUT", f"/predictions/{model}", photo, headers) for photo in photos]


def jpeg_v2_infer(model: str, photos: Sequence[bytes]) -> list[HttpRequest]:
    """The Open Inference Protocol (KServe v2) over REST, as ``tritonclient`` and KServe's SDK
    send an image: ``POST /v2/models/<model>/infer`` with a JSON body whose one BYTES input of
    shape [1] holds the base64 of the JPEG, one request per photo. The JSON is built here, once
    per point, so that the client spends nothing per request on it."""
    headers = (("Content-Type", "application/json"),)
    return [
        HttpRequest("POST", f"/v2/models/{model}/infer", _v2_body(photo), headers)
        for photo in photos
    ]


def _v2_body(photo: bytes) -> bytes:
    image = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1],
        "data": [base64.b64encode(photo).decode("ascii")],
    }
    return json.dumps({"inputs": [image]}).encode("ascii")


@dataclass(frozen=True)
class Latency:
    """Milliseconds from sending a request to its whole answer, over a window's good answers
    (NaN when there were none)."""

    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, sorted_ms: Sequence[float]) -> Latency:
        """Nearest-rank percentiles (an observed latency, never an interpolated one)."""
        mean = statistics.fmean(sorted_ms) if sorted_ms else float("nan")
        return cls(*(percentile(sorted_ms, p) for p in (50, 90, 99)), mean)


@dataclass(frozen=True)
class LoadPoint:
    """One measured point: ``concurrency`` closed-loop clients for one window. ``requests``
    counts the good answers inside the window, ``errors`` the failures of all phases."""

    concurrency: int
    window_s: float
    warmup_s: float
    requests: int
    throughput_rps: float
    latency_ms: Latency
    errors: int
    error_kinds: dict[str, int]
    client_cpu_s: float


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN for none)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


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
    keep_alive = headers.get("connection", "").lower() != "close"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        await _read_chunks(reader)
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif not keep_alive:
        await reader.read()  # the body ends where the server closes the connection
    return status, keep_alive


async def _read_chunks(reader: asyncio.StreamReader) -> None:
    """A chunked body: each chunk's size line (extensions after ``;`` ignored), its data and
    CRLF; after the last (size 0), trailer lines up to an empty one."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            break
        await reader.readexactly(size + 2)
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass


async def _run_point(
    url: str,
    requests: Sequence[HttpRequest],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_warmup_s: float,
    timeout_s: float,
) -> LoadPoint:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    wire = [request.encode(host, port) for request in requests]
    records: list[tuple[float, float, int]] = []  # (end, latency s, status; 0: no answer)
    failures: Counter[str] = Counter()
    answered_once: set[int] = set()
    everyone_answered = asyncio.Event()
    stop = False

    async def client(index: int) -> None:
        """One closed-loop client on its own keep-alive connection; reconnects after a drop.
        Clients start at different requests so that a batch holds a mix of them."""
        order = itertools.islice(itertools.cycle(range(len(wire))), index % len(wire), None)
        writer: asyncio.StreamWriter | None = None
        try:
            for which in order:
                if stop:
                    return
                start = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(wire[which])
                    status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout_s)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
                    failures[type(err).__name__] += 1
                    status, keep_alive = 0, False
                end = time.perf_counter()
                records.append((end, end - start, status))
                if not keep_alive and writer is not None:
                    writer.close()
                    writer = None
                answered_once.add(index)
                if len(answered_once) == concurrency:
                    everyone_answered.set()
        finally:
            if writer is not None:
                writer.close()

    began = time.perf_counter()
    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)
    remaining = max(0.0, max_warmup_s - (time.perf_counter() - began))
    # Past max_warmup_s the window opens anyway; the recorded warm-up says how long it was.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(everyone_answered.wait(), remaining)
    window_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.sleep(duration_s)
    window_end, cpu_window = time.perf_counter(), time.process_time() - cpu_start
    stop = True
    await asyncio.gather(*tasks)

    good = sorted(
        latency_s * 1000
        for end, latency_s, status in records
        if window_start <= end < window_end and status == 200
    )
    statuses = [status for _, _, status in records if status != 200]
    failures.update(f"HTTP {status}" for status in statuses if status)
    window = window_end - window_start
    return LoadPoint(
        concurrency=concurrency,
        window_s=window,
        warmup_s=window_start - began,
        requests=len(good),
        throughput_rps=len(good) / window,
        latency_ms=Latency.of(good),
        errors=len(statuses),
        error_kinds=dict(failures),
        client_cpu_s=cpu_window,
    )


def run_point(
    url: str,
    requests: Sequence[HttpRequest],
    concurrency: int,
    *,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    max_warmup_s: float = 40.0,
    timeout_s: float = 120.0,
) -> LoadPoint:
    """Measure one point against ``url`` (the inference address), the clients cycling through
    ``requests``; see the module docstring."""
    if not requests:
        raise ValueError("run_point needs at least one request")
    timing = (duration_s, warmup_s, max_warmup_s, timeout_s)
    return asyncio.run(_run_point(url, requests, concurrency, *timing))
