"""The public inference door of a server: an HTTP/1.1 relay to TorchServe's inference socket that
also answers the Open Inference Protocol's health and metadata paths, and (with ``--grpc``) the
protocol's gRPC service (oip_grpc.py).

TorchServe 0.12 has no REST path for model readiness or model metadata, its ``/v2/health/ready``
is true with no worker, and a frontend plugin cannot add them (docs/open-inference.md). This
door answers them from TorchServe's own state (the management socket: which workers are READY)
and from the archives (each one's format). Everything else is relayed unchanged, one request
after the other per connection (pipelined requests are answered in order); a versioned infer
(``/v2/models/<m>/versions/<v>/infer``, which TorchServe does not route) goes to
``/predictions/<m>/<v>``, where the handler reads the same body.

It replaces a byte relay (socat, a process per connection) with one process: connections are
capped, an idle keep-alive connection is closed after a while, and on SIGTERM the listener
closes first and every request already accepted is answered before the door exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import yaml

from resnet_mar.server_doors import LISTENING

#: A request head larger than this is refused (431): TorchServe's own limit is 8 KiB of headers.
MAX_HEAD = 64 * 1024
#: Connections served at once; beyond, a connection gets 503 and is closed.
MAX_CONNECTIONS = 512
#: An idle keep-alive connection is closed after this long; at a stop, after this moment.
IDLE_TIMEOUT_S, STOP_GRACE_S = 60.0, 0.5
#: Bodies up to this size are relayed in one piece (TorchServe refuses more than 8 MiB).
WHOLE_BODY = 16 * 1024 * 1024
#: Worker states are asked of TorchServe at most this often (health checks can be frequent).
STATE_TTL_S = 0.5
#: Each archive's format, as the protocol's "platform" names it.
PLATFORMS = {
    "torchscript": "pytorch_torchscript",
    "onnx": "onnxruntime_onnx",
    "aoti": "pytorch_aoti",
    "openvino": "openvino_onnx",
    "int8": "openvino_int8",
}
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/explain)?/?$")


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def json(cls, status: int, document: Any) -> Reply:
        body = json.dumps(document, separators=(",", ":")).encode()
        return cls(status, {"content-type": "application/json"}, body)


#: The answer while TorchServe does not listen behind the door: the server is starting or stopping.
NOT_LISTENING = Reply(
    503,
    {"content-type": "application/json", "retry-after": "1"},
    b'{"error":"the server is starting or stopping: retry in a moment"}',
)


class UnixHTTP:
    """One HTTP/1.1 exchange at a time with a server on a unix socket (TorchServe's inference
    or management door), each on a fresh connection."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_HEAD)
        try:
            sent = {"host": "localhost", "content-length": str(len(body)), **(headers or {})}
            lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in sent.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            while True:
                status, fields, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
                if not 100 <= int(status) < 200:
                    break
            chunks = [chunk async for chunk in body_chunks(reader, fields, response=True)]
            return Reply(int(status), dict(fields), b"".join(chunks))
        finally:
            writer.close()


class ModelRegistry:
    """What the protocol's health and metadata paths answer: TorchServe's models, their versions
    and READY workers (asked of the management door), and each archive's format."""

    def __init__(self, management: UnixHTTP, model_store: Path) -> None:
        self.management = management
        self.formats = archive_formats(model_store)
        self._described: dict[str, list[dict[str, Any]]] = {}
        self._asked = 0.0

    async def described(self) -> dict[str, list[dict[str, Any]]]:
        """Every model's versions as TorchServe describes them (cached for STATE_TTL_S)."""
        if time.monotonic() - self._asked > STATE_TTL_S:
            listed = await self.management.request("GET", "/models")
            names = [m["modelName"] for m in json.loads(listed.body or b"{}").get("models", [])]
            found = {}
            for name in names:
                reply = await self.management.request("GET", f"/models/{name}/all")
                found[name] = json.loads(reply.body) if reply.status == 200 else []
            self._described, self._asked = found, time.monotonic()
        return self._described

    async def version(self, name: str, version: str | None) -> dict[str, Any] | None:
        """The description of ``name`` at ``version`` (its default when None), or None."""
        versions = (await self.described()).get(name, [])
        for entry in versions:
            if entry.get("modelVersion") == version or (version is None and _default(entry)):
                return entry
        return None if version is not None or not versions else versions[0]

    async def model_ready(self, name: str, version: str | None) -> bool | None:
        entry = await self.version(name, version)
        if entry is None:
            return None
        return any(worker.get("status") == "READY" for worker in entry.get("workers", []))

    async def server_ready(self) -> bool:
        names = list(await self.described())
        return bool(names) and all([await self.model_ready(name, None) for name in names])

    async def metadata(self, name: str, version: str | None) -> dict[str, Any] | None:
        entry = await self.version(name, version)
        if entry is None:
            return None
        versions = [v.get("modelVersion") for v in (await self.described()).get(name, [])]
        return {
            "name": name,
            "versions": versions,
            "platform": PLATFORMS.get(self.formats.get(name, ""), self.formats.get(name, "")),
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
            ],
        }

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {
            "name": "resnet-mar",
            "version": toolkit_version(),
            "extensions": ["binary_tensor_data"],
        }


def toolkit_version() -> str:
    """This toolkit's version: installed (make setup), or as pyproject.toml says (an image)."""
    try:
        return installed_version("resnet-mar")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text())
        return found.group(1) if found else "unknown"


def _default(entry: dict[str, Any]) -> bool:
    return bool(entry.get("isDefault", entry.get("defaultVersion", False)))


def archive_formats(model_store: Path) -> dict[str, str]:
    """Each archive's format, by model name (its model-config.yaml, handler.model_format)."""
    found = {}
    for mar in sorted(model_store.glob("*.mar")):
        with zipfile.ZipFile(mar) as archive:
            config = yaml.safe_load(archive.read("model-config.yaml"))
        found[mar.stem] = str((config.get("handler") or {}).get("model_format", ""))
    return found


async def answer_locally(method: str, path: str, registry: ModelRegistry) -> Reply | None:
    """The reply to a health or metadata request, or None for what TorchServe answers."""
    if method not in ("GET", "HEAD"):
        return None
    if path in ("/v2", "/v2/"):
        return Reply.json(200, registry.server_metadata())
    if path == "/v2/health/live":
        return Reply.json(200, {"live": True})
    if path == "/v2/health/ready":
        ready = await registry.server_ready()
        return Reply.json(200 if ready else 503, {"ready": ready})
    found = _MODEL_PATH.match(path)
    if found is None or found.group(3) in ("/infer", "/explain"):
        return None
    name, version, action = found.groups()
    if action == "/ready":
        ready = await registry.model_ready(name, version)
        if ready is not None:
            return Reply.json(200 if ready else 503, {"name": name, "ready": ready})
    else:
        metadata = await registry.metadata(name, version)
        if metadata is not None:
            return Reply.json(200, metadata)
    where = f"model {name}" + (f" version {version}" if version else "")
    return Reply.json(404, {"error": f"{where} is not served here"})


def routed_target(target: str) -> str:
    """Where TorchServe answers a request: a versioned v2 infer goes to /predictions/<m>/<v>
    (TorchServe routes no versioned v2 path; the handler reads the v2 body there as well)."""
    found = _MODEL_PATH.match(target.split("?", 1)[0])
    if found and found.group(2) and found.group(3) == "/infer":
        return f"/predictions/{found.group(1)}/{found.group(2)}"
    return target


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]], list[str]]:
    """A message head -> the second word of its start line (a response's status, a request's
    target), its headers (names lower-cased) and its start line's words."""
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split(" ", 2)
    if len(words) < 3:
        raise ValueError(f"malformed start line {lines[0][:60]!r}")
    fields = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise ValueError(f"malformed header line {line[:60]!r}")
        fields.append((name.lower(), value.strip()))
    return words[1], fields, words


async def body_chunks(
    reader: asyncio.StreamReader, fields: list[tuple[str, str]], *, response: bool = False
) -> Any:
    """A message body as it arrives, framing kept for chunked bodies (a relay passes the
    chunks on as they are). A response without a length runs to the end of the connection."""
    headers = dict(fields)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            yield size_line
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    yield trailer
                    if trailer == b"\r\n":
                        return
            async for chunk in _exactly(reader, size + 2):
                yield chunk
    elif "content-length" in headers:
        async for chunk in _exactly(reader, int(headers["content-length"])):
            yield chunk
    elif response:
        while chunk := await reader.read(1 << 16):
            yield chunk


async def _exactly(reader: asyncio.StreamReader, size: int) -> Any:
    """``size`` bytes as they arrive: in one piece up to WHOLE_BODY (one read and one write,
    the common case), else in 64 KiB pieces."""
    if 0 < size <= WHOLE_BODY:
        yield await reader.readexactly(size)
        return
    remaining = size
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 16))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(chunk)
        yield chunk


def encode_reply(reply: Reply, *, close: bool, head_only: bool = False) -> bytes:
    phrases = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too"
               " Large", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip
    headers = {**reply.headers, "content-length": str(len(reply.body))}
    if close:
        headers["connection"] = "close"
    lines = [f"HTTP/1.1 {reply.status} {phrases.get(reply.status, '')}".rstrip()]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else reply.body)


def closing_head(head: bytes) -> bytes:
    """A response head that says ``Connection: close``, whatever it said before."""
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    kept = [line for line in lines[1:] if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([lines[0], *kept, b"connection: close"]) + b"\r\n\r\n"


def wants_close(version: str, fields: list[tuple[str, str]]) -> bool:
    connection = dict(fields).get("connection", "").lower()
    return "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)


class FrontDoor:
    """The relay: one task per client connection, requests answered in order."""

    def __init__(self, upstream: Path, registry: ModelRegistry) -> None:
        self.upstream = upstream
        self.registry = registry
        self.connections: set[asyncio.Task] = set()
        #: Connections waiting for their next request, with their idle timer.
        self.idle: dict[asyncio.StreamWriter, asyncio.TimerHandle] = {}
        self.stopping = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            if len(self.connections) > MAX_CONNECTIONS:
                busy = Reply.json(503, {"error": "too many connections: retry later"})
                writer.write(encode_reply(busy, close=True))
                await writer.drain()
                return
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next_head(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The next request's head, or None once the client is done, idle too long, or the
        door is stopping between requests (``drain`` closes idle connections)."""
        if self.stopping.is_set():
            return None
        idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, writer.close)
        self.idle[writer] = idle
        try:
            return await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        finally:
            idle.cancel()
            self.idle.pop(writer, None)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (head := await self._next_head(reader, writer)) is not None:
                try:
                    target, fields, words = parse_head(head)
                except ValueError as err:
                    writer.write(encode_reply(Reply.json(400, {"error": str(err)}), close=True))
                    return
                method, version = words[0], words[2]
                if method in ("CONNECT", "PRI") or not target.startswith("/"):
                    refused = Reply.json(400, {"error": f"{method} {target[:40]} is not served"})
                    writer.write(encode_reply(refused, close=True))
                    return
                close = wants_close(version, fields) or self.stopping.is_set()
                local = await answer_locally(method, target.split("?", 1)[0], self.registry)
                if local is not None:
                    writer.write(encode_reply(local, close=close, head_only=method == "HEAD"))
                    await writer.drain()
                    if close:
                        return
                    continue
                if upstream is None:
                    try:
                        upstream = await asyncio.open_unix_connection(
                            str(self.upstream), limit=MAX_HEAD
                        )
                    except OSError:  # TorchServe not listening yet (starting) or any more
                        if dict(fields).get("expect", "").lower() != "100-continue":
                            async for _ in body_chunks(reader, fields):
                                pass  # read whole: the client is not cut off while sending
                        writer.write(encode_reply(NOT_LISTENING, close=True))
                        return
                routed = head if routed_target(target) == target else head.replace(
                    target.encode("latin-1"), routed_target(target).encode("latin-1"), 1
                )  # fmt: skip
                if not await self._exchange(reader, writer, upstream, routed, fields, method):
                    return
                if close:
                    return
        finally:
            if upstream is not None:
                upstream[1].close()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        head: bytes,
        fields: list[tuple[str, str]],
        method: str,
    ) -> bool:
        """Relay one request and its response; whether the connection may carry another."""
        up_reader, up_writer = upstream
        up_writer.write(head)
        if dict(fields).get("expect", "").lower() == "100-continue":
            await up_writer.drain()
            interim, response = await self._response_head(up_reader)
            if interim != b"":
                writer.write(interim)  # 100 Continue: the client sends its body now
            elif response is not None:  # refused before the body (413): answer and close
                await self._relay_response(up_reader, writer, *response, method)
                return False
        async for chunk in body_chunks(reader, fields):
            up_writer.write(chunk)
            await up_writer.drain()
        await up_writer.drain()
        while True:
            interim, response = await self._response_head(up_reader)
            if response is not None:
                return await self._relay_response(up_reader, writer, *response, method)
            writer.write(interim)

    @staticmethod
    async def _response_head(
        reader: asyncio.StreamReader,
    ) -> tuple[bytes, tuple[bytes, str, list[tuple[str, str]]] | None]:
        """An interim (1xx) response head, or a final one with its status and headers."""
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields, _ = parse_head(head)
        if status.startswith("1") and status != "101":
            return head, None
        return b"", (head, status, fields)

    async def _relay_response(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        status: str,
        fields: list[tuple[str, str]],
        method: str,
    ) -> bool:
        # Stopping: the answer says the connection closes after it, so the client opens a
        # new one (refused: the listener is closed) instead of sending on one being closed.
        stopping = self.stopping.is_set()
        writer.write(closing_head(head) if stopping else head)
        if method != "HEAD" and status not in ("204", "304"):
            async for chunk in body_chunks(reader, fields, response=True):
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
        headers = dict(fields)
        framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "")
        return framed and not stopping and "close" not in headers.get("connection", "").lower()

    async def drain(self, timeout_s: float) -> None:
        """Stop between requests: a busy connection closes after its answer, an idle one after
        a moment in which a request it was already sending is still read and answered."""
        self.stopping.set()
        loop = asyncio.get_running_loop()
        for writer, timer in list(self.idle.items()):
            timer.cancel()  # a request already on its way is still answered (and the
            loop.call_later(STOP_GRACE_S, writer.close)  # connection closed after it)
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=timeout_s)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def run(args: argparse.Namespace) -> None:
    registry = ModelRegistry(UnixHTTP(args.management), args.model_store)
    door = FrontDoor(args.inference, registry)
    host, port = host_port(args.listen)
    grpc_server = None
    if args.grpc:  # first: once the HTTP door accepts, both are open
        from resnet_mar.oip_grpc import grpc_server as make_grpc_server

        try:
            grpc_server = make_grpc_server(args.grpc, UnixHTTP(args.inference), registry)
        except OSError as err:
            raise SystemExit(f"front door: {err}") from None
        await grpc_server.start()
    try:
        server = await asyncio.start_server(door.serve, host, port, limit=MAX_HEAD, backlog=1024)
    except OSError as err:
        raise SystemExit(f"front door: cannot listen on {args.listen}: {err.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    grpc = f", gRPC on {args.grpc}" if args.grpc else ""
    print(f"{LISTENING}: HTTP on {args.listen}{grpc}", flush=True)
    await stop.wait()
    server.close()  # the listener first: new connections are refused from here on
    if grpc_server is not None:
        await grpc_server.stop(args.drain)
    await door.drain(args.drain)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_mar.front_door", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port of the public HTTP door")
    parser.add_argument("--inference", type=Path, required=True, help="TorchServe's socket")
    parser.add_argument("--management", type=Path, required=True, help="its management socket")
    parser.add_argument("--model-store", type=Path, required=True, help="the served archives")
    parser.add_argument("--grpc", help="host:port of the Open Inference gRPC door (none: off)")
    parser.add_argument("--drain", type=float, default=30, help="seconds to finish on SIGTERM")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
