"""Clients that flood a server, with one connection per request or kept-open connections, for
the tests of a stop that drains (make stop, a container's stop) and the kill-and-restart soak."""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections.abc import Callable

from resnet_mar.server_doors import host_and_port

#: The judge of an answer: (request's index, status, body) -> its outcome.
Judge = Callable[[int, int, bytes], str]


def by_status(_: int, status: int, __: bytes) -> str:
    return "answered" if status == 200 else f"HTTP {status}"


class Flood:
    """Clients that send requests until told to stop; each outcome is what ``judge`` makes of
    the answer ("answered" for a 200 by default), "door closed" (the connection was refused:
    the server stopped taking requests), or what went wrong after a connection was accepted.
    ``timeline`` holds each outcome with the moment it came (time.monotonic) and its request.

    ``kept_open`` clients send request after request on one connection, as browsers and
    HTTP libraries do, and open a new one only when the server said ``Connection: close``.
    ``requests``: (path, body) pairs the clients take turns sending."""

    def __init__(
        self,
        address: str,
        body: bytes | None = None,
        clients: int = 6,
        kept_open: int = 0,
        *,
        requests: list[tuple[str, bytes]] | None = None,
        judge: Judge = by_status,
    ) -> None:
        self.host, self.port = host_and_port(address)
        self.requests = requests or [("/predictions/resnet18", body or b"")]
        self.judge = judge
        self.timeline: list[tuple[float, int, str]] = []
        self.stopping = threading.Event()
        self._turns = itertools.count()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.threads += [threading.Thread(target=self._kept_open_client) for _ in range(kept_open)]

    @property
    def outcomes(self) -> list[str]:
        return [outcome for _, _, outcome in self.timeline]

    def _record(self, request: int, outcome: str) -> None:
        self.timeline.append((time.monotonic(), request, outcome))

    def _exchange(self, connection: http.client.HTTPConnection) -> None:
        request = next(self._turns) % len(self.requests)
        path, body = self.requests[request]
        try:
            connection.request("PUT", path, body)
            response = connection.getresponse()
            self._record(request, self.judge(request, response.status, response.read()))
        except (OSError, http.client.HTTPException) as err:
            self._record(request, f"{type(err).__name__} after the connection was accepted")
            connection.close()

    def _connected(self, connection: http.client.HTTPConnection) -> bool:
        try:
            connection.connect()
        except ConnectionRefusedError:
            self._record(-1, "door closed")
            time.sleep(0.05)
            return False
        return True

    def _client(self) -> None:
        while not self.stopping.is_set():
            connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
            if self._connected(connection):
                self._exchange(connection)
            connection.close()

    def _kept_open_client(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
        while not self.stopping.is_set():
            # connect on the first request, and after the server said Connection: close
            if connection.sock is not None or self._connected(connection):
                self._exchange(connection)
        connection.close()

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(180)
