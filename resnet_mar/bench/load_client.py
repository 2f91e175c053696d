"""A closed-loop HTTP/1.1 load generator: one asyncio loop, one raw keep-alive connection per
client, so that it takes as little as it can of the cores it shares with the server it measures
(``requests`` in threads, or locust, would take far more).

Each client sends its next request as soon as its last answer arrived. A point warms up (at
least ``warmup_s``, until every client has had an answer, at most ``max_warmup_s``), counts the
good answers that arrive inside its window (``duration_s``), then lets the clients finish. Errors
count in every phase: a status other than 200, a dropped connection, no answer in ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpRequest:
    """One request as a protocol shapes it; the client adds Host, Content-Length, keep-alive."""

    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, host: str, port: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: keep-alive", "", ""]
        return "\r\n".join(lines).encode("ascii") + self.body


def jpeg_predictions(model: str, photos: Sequence[bytes]) -> list[HttpRequest]:
    """TorchServe's inference API: ``PUT /predictions/<model>``, the JPEG as the body."""
    headers = (("Content-Type", "image/jpeg"),)
    return [HttpRequest("PUT", f"/predictions/{model}", photo, headers) for photo in photos]


def jpeg_v2_infer(model: str, photos: Sequence[bytes]) -> list[HttpRequest]:
    """The Open Inference Protocol as KServe's SDK sends an image: one BYTES input of shape [1]
    holding the JPEG's base64, as JSON to ``/v2/models/<model>/infer``."""
    requests = []
    for photo in photos:
        data = [base64.b64encode(photo).decode("ascii")]
        image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": data}
        body = json.dumps({"inputs": [image]}).encode("ascii")
        headers = (("Content-Type", "application/json"),)
        requests.append(HttpRequest("POST", f"/v2/models/{model}/infer", body, headers))
    return requests


@dataclass(frozen=True)
class Latency:
    """Milliseconds from sending a request to its whole answer, to 0.01 (NaN: no good answer)."""

    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, sorted_ms: Sequence[float]) -> Latency:
        found = [percentile(sorted_ms, p) for p in (50, 90, 99)]
        found.append(statistics.fmean(sorted_ms) if sorted_ms else math.nan)
        return cls(*(round(v, 2) for v in found))


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest rank: always an observed value, never an interpolated one (NaN for none)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(pct / 100 * len(sorted_values)) - 1)]


@dataclass(frozen=True)
class LoadPoint:
    """``requests``: the good answers inside the window; ``errors``: failures in every phase.
    Seconds and rates to 0.001, as ``bench.json`` keeps them."""

    concurrency: int
    window_s: float
    warmup_s: float
    requests: int
    throughput_rps: float
    latency_ms: Latency
    errors: int
    error_kinds: dict[str, int]
    client_cpu_s: float


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """The status and whether the connection stays open; the body is read past."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status_line, *lines = head.split("\r\n")
    headers = {name.strip(): v.strip() for name, _, v in (line.partition(":") for line in lines)}
    keep_alive = headers.get("connection") != "close"
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
            pass
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif not keep_alive:
        await reader.read()
    return int(status_line.split()[1]), keep_alive


async def _run_point(
    url: str,
    requests: Sequence[HttpRequest],
    concurrency: int,
    at_window: Callable[[], object],
    *timing: float,
) -> LoadPoint:
    duration_s, warmup_s, max_warmup_s, timeout_s = timing
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    wire = [request.encode(host, port) for request in requests]
    records: list[tuple[float, float, int]] = []  # (end, latency s, status; 0: no answer)
    failures: Counter[str] = Counter()
    unanswered = set(range(concurrency))
    stop = False

    async def client(index: int) -> None:
        # Clients start at different requests, so that a batch holds a mix of them.
        writer = None
        for which in itertools.count(index):
            if stop:
                break
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(wire[which % len(wire)])
                status, keep_alive = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
                failures[type(err).__name__] += 1
                status, keep_alive = 0, False
            end = time.perf_counter()
            records.append((end, end - start, status))
            unanswered.discard(index)
            if not keep_alive and writer is not None:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    began = time.perf_counter()
    tasks = [asyncio.create_task(client(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)
    # Past max_warmup_s the window opens anyway; the recorded warm-up says how long it was.
    while unanswered and time.perf_counter() - began < max_warmup_s:
        await asyncio.sleep(0.01)
    at_window()
    window_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.sleep(duration_s)
    window_end, cpu_s = time.perf_counter(), time.process_time() - cpu_start
    at_window()
    stop = True
    await asyncio.gather(*tasks)
    in_window = [(s, status) for end, s, status in records if window_start <= end < window_end]
    good = sorted(s * 1000 for s, status in in_window if status == 200)
    bad = [status for *_, status in records if status != 200]
    failures.update(f"HTTP {status}" for status in bad if status)
    window = window_end - window_start
    return LoadPoint(
        concurrency,
        round(window, 3),
        round(window_start - began, 3),
        len(good),
        round(len(good) / window, 3),
        Latency.of(good),
        len(bad),
        dict(failures),
        round(cpu_s, 3),
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
    at_window: Callable[[], object] = lambda: None,
) -> LoadPoint:
    """One point against ``url`` (the inference address), the clients cycling ``requests``;
    ``at_window`` is called as the measured window opens and as it closes (a CPU sample)."""
    if not requests:
        raise ValueError("run_point needs at least one request")
    timing = (duration_s, warmup_s, max_warmup_s, timeout_s)
    return asyncio.run(_run_point(url, requests, concurrency, at_window, *timing))
