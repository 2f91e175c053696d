"""The benchmark's load client against a tiny HTTP/1.1 server of the test's own: how it frames
responses (length, chunks, close), what it counts as answers and errors, and its percentiles.

Every point runs a fraction of a second on loopback; no TorchServe is needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from resnet_mar.bench.load_client import (
    HttpRequest,
    Latency,
    jpeg_predictions,
    jpeg_v2_infer,
    percentile,
    run_point,
)
from resnet_serving.inference_protocols import OPEN_INFERENCE, read_request

BODY = b'{"tabby": 0.5, "tiger_cat": 0.25}'

#: The server's answer to each last path segment.
ANSWERS = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    # Three chunks (two with extensions), the last chunk, a trailer field, the empty line.
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(
        b"%x%s\r\n%s\r\n" % (len(part), extension, part)
        for part, extension in ((BODY[:5], b""), (BODY[5:15], b";name=value"), (BODY[15:], b";x"))
    )
    + b"0\r\nX-Trailer: done\r\n\r\n",
    "close": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(BODY), BODY),
    "busy": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}",
}


@dataclass
class TinyServer:
    """Answers each request by its path's last segment (``ANSWERS``); ``drop`` closes the
    connection without an answer, ``silent`` never answers. Counts what it saw."""

    url: str = ""
    connections: int = 0
    answered: int = 0
    unanswered: int = 0
    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    first_paths: list[str] = field(default_factory=list)  # each connection's first request

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        opening = True
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed its connection
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ")
                headers = {
                    name.lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append((method, path, headers, body))
                if opening:
                    self.first_paths.append(path)
                    opening = False
                mode = path.rsplit("/", 1)[-1]
                if mode in ("drop", "silent"):
                    self.unanswered += 1
                    if mode == "silent":
                        await asyncio.sleep(3600)
                    return
                self.answered += 1  # before writing: the client may finish on this answer
                writer.write(ANSWERS[mode])
                await writer.drain()
                if mode == "close":
                    return
        finally:
            writer.close()


@pytest.fixture
def server() -> Iterator[TinyServer]:
    """The server on a free loopback port, in its own thread (``run_point`` runs its own loop)."""
    tiny = TinyServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def start() -> asyncio.Server:
        listening = await asyncio.start_server(tiny.serve, "127.0.0.1", 0)
        tiny.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        ready.set()
        return listening

    listening = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ready.wait()
    yield tiny

    async def stop() -> None:
        listening.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def post(*modes: str) -> list[HttpRequest]:
    return [HttpRequest("POST", f"/predictions/{mode}", b"x" * 10) for mode in modes]


def measure(server: TinyServer, requests: list[HttpRequest], concurrency: int = 2, **kw: float):
    return run_point(
        server.url, requests, concurrency, duration_s=0.3, warmup_s=0.05, max_warmup_s=2.0, **kw
    )


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_keep_alive_answers_are_counted_on_one_connection_per_client(
    server: TinyServer, mode: str
) -> None:
    point = measure(server, post(mode))
    assert point.errors == 0 and point.error_kinds == {}
    assert 0 < point.requests <= server.answered
    # The window is kept to the millisecond: of 0.3 s, within 0.2%.
    assert point.throughput_rps == pytest.approx(point.requests / point.window_s, rel=2e-3)
    assert server.connections == 2  # a misread body would have cost a connection (or an error)
    assert point.latency_ms.p50 <= point.latency_ms.p90 <= point.latency_ms.p99
    # To the precision bench.json keeps: a report rendered from it is the run's.
    assert all(round(v, 2) == v for v in vars(point.latency_ms).values())
    seconds = (point.window_s, point.warmup_s, point.throughput_rps, point.client_cpu_s)
    assert all(round(v, 3) == v for v in seconds)


def test_lengths_and_chunks_alternate_on_one_connection(server: TinyServer) -> None:
    """Each body read to its exact end: the next response starts where the last one ended."""
    point = measure(server, post("chunked", "length"), concurrency=1)
    assert point.errors == 0 and server.connections == 1
    assert server.answered >= 4


def test_connection_close_reconnects_and_keeps_counting(server: TinyServer) -> None:
    point = measure(server, post("close"), concurrency=2)
    assert point.errors == 0 and point.error_kinds == {}
    assert point.requests > 2
    assert server.connections == server.answered  # one connection per answer


def test_503_answers_are_errors_not_answers(server: TinyServer) -> None:
    point = measure(server, post("busy"))
    assert point.requests == 0 and point.throughput_rps == 0
    assert point.errors == server.answered > 0  # every phase counts
    assert point.error_kinds == {"HTTP 503": point.errors}
    assert server.connections == 2  # a 503 with a length keeps its connection
    assert math.isnan(point.latency_ms.p50)


def test_503_among_good_answers(server: TinyServer) -> None:
    point = measure(server, post("length", "busy"), concurrency=1)
    assert point.requests > 0
    assert point.errors == point.error_kinds["HTTP 503"] == server.answered // 2


def test_dropped_connection_and_timeout_are_error_kinds(server: TinyServer) -> None:
    dropped = measure(server, post("drop"))
    assert dropped.requests == 0
    assert dropped.error_kinds == {"IncompleteReadError": server.unanswered}
    assert dropped.errors == server.unanswered > 0

    before = server.unanswered
    silent = measure(server, post("silent"), timeout_s=0.2)
    assert silent.error_kinds == {"TimeoutError": server.unanswered - before}
    assert silent.errors == server.unanswered - before > 0


def test_requests_are_sent_as_given(server: TinyServer) -> None:
    """Another protocol (e.g. a JSON body to another path) is only another request."""
    body = b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["..."]}]}'
    request = HttpRequest(
        "POST", "/v2/models/m/infer/length", body, (("Content-Type", "application/json"),)
    )
    measure(server, [request], concurrency=1)
    method, path, headers, received = server.received[0]
    assert (method, path, received) == ("POST", "/v2/models/m/infer/length", body)
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["host"] == server.url.removeprefix("http://")


def test_clients_start_at_different_requests(server: TinyServer) -> None:
    """Requests are cycled per client from its own offset, so a batch holds a mix."""
    measure(server, [*post("length"), HttpRequest("PUT", "/other/length", b"")], concurrency=2)
    assert sorted(server.first_paths) == ["/other/length", "/predictions/length"]


def test_jpeg_predictions_is_torchservess_inference_api() -> None:
    requests = jpeg_predictions("resnet18", [b"\xff\xd8a", b"\xff\xd8b"])
    assert [(r.method, r.path, r.body) for r in requests] == [
        ("PUT", "/predictions/resnet18", b"\xff\xd8a"),
        ("PUT", "/predictions/resnet18", b"\xff\xd8b"),
    ]
    wire = requests[0].encode("127.0.0.1", 8080)
    assert wire == (
        b"PUT /predictions/resnet18 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        b"\xff\xd8a"
    )


def test_jpeg_v2_infer_is_the_open_inference_request_the_handler_reads() -> None:
    """One BYTES input of shape [1] holding the JPEG's base64, as JSON to /v2/models/<m>/infer;
    the handler's own protocol reader finds the very JPEG bytes in it."""
    photos = [b"\xff\xd8a", b"\xff\xd8b\x00\xfe"]
    requests = jpeg_v2_infer("resnet18", photos)
    assert [(r.method, r.path) for r in requests] == [("POST", "/v2/models/resnet18/infer")] * 2
    assert all(r.headers == (("Content-Type", "application/json"),) for r in requests)
    for request, photo in zip(requests, photos, strict=True):
        assert json.loads(request.body) == {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(photo).decode("ascii")],
                }
            ]
        }
        # TorchServe hands a JSON body over parsed or as bytes: the handler reads both.
        for body in (request.body, json.loads(request.body)):
            parsed = read_request(
                {"body": body}, {}, default_topk=5, num_classes=1000, max_images=32
            )
            assert (parsed.protocol, parsed.images, parsed.topk) == (OPEN_INFERENCE, [photo], 5)


def test_run_point_needs_a_request() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        run_point("http://127.0.0.1:9", [], 1)


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(0, 15), (5, 15), (30, 20), (40, 20), (50, 35), (90, 50), (100, 50)],
)
def test_nearest_rank_percentile(pct: float, expected: float) -> None:
    """The nearest-rank method's textbook example: always an observed value."""
    assert percentile([15, 20, 35, 40, 50], pct) == expected


def test_latency_of_a_window() -> None:
    latency = Latency.of([float(ms) for ms in range(1, 101)])  # 1..100 ms
    assert (latency.p50, latency.p90, latency.p99, latency.mean) == (50, 90, 99, 50.5)
    assert Latency.of([7.0]) == Latency(7.0, 7.0, 7.0, 7.0)
    assert Latency.of([163.2049, 178.0051, 232.4449]) == Latency(178.01, 232.44, 232.44, 191.22)
    assert all(math.isnan(v) for v in vars(Latency.of([])).values())
