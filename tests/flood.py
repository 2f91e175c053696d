"""Clients that flood a server, with one connection per request or kept-open connections, for
the tests of a stop that drains (make stop, a container's stop)."""

from __future__ import annotations

import http.client
import threading
import time

from resnet_mar.server_doors import host_and_port


class Flood:
    """Clients that send requests until told to stop; each outcome is "answered" (200), "door
    closed" (the connection was refused: the server stopped taking requests), or what went
    wrong after a connection was accepted.

    ``kept_open`` clients send request after request on one connection, as browsers and
    HTTP libraries do, and open a new one only when the server said ``Connection: close``."""

    def __init__(self, address: str, body: bytes, clients: int = 6, kept_open: int = 0) -> None:
        self.host, self.port = host_and_port(address)
        self.body = body
        self.outcomes: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.threads += [threading.Thread(target=self._kept_open_client) for _ in range(kept_open)]

    def _kept_open_client(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            while not self.stopping.is_set():
                if connection.sock is None:  # the first request, or the server said close
                    try:
                        connection.connect()
                    except ConnectionRefusedError:
                        self.outcomes.append("door closed")
                        time.sleep(0.05)
                        continue
                try:
                    connection.request("PUT", "/predictions/resnet18", self.body)
                    response = connection.getresponse()
                    response.read()
                    self.outcomes.append(
                        "answered" if response.status == 200 else f"HTTP {response.status}"
                    )
                except (OSError, http.client.HTTPException) as err:
                    self.outcomes.append(f"{type(err).__name__} on a kept-open connection")
                    connection.close()
        finally:
            connection.close()

    def _client(self) -> None:
        while not self.stopping.is_set():
            connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                connection.connect()
            except ConnectionRefusedError:
                self.outcomes.append("door closed")
                time.sleep(0.05)
                continue
            try:
                connection.request("PUT", "/predictions/resnet18", self.body)
                status = connection.getresponse().status
                self.outcomes.append("answered" if status == 200 else f"HTTP {status}")
            except (OSError, http.client.HTTPException) as err:
                self.outcomes.append(f"{type(err).__name__} after the connection was accepted")
            finally:
                connection.close()

    def __enter__(self) -> Flood:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
