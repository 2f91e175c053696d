"""The front door without TorchServe: a fake inference socket that echoes what reached it and a
fake management socket with canned worker states. Requests are relayed in order, the protocol's
health and metadata are answered from the workers' states, and a stop answers what was accepted."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from resnet_mar.front_door import FrontDoor, ModelRegistry, UnixHTTP, closing_head, parse_head


async def fake_torchserve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with what reached it: method, target and body length; a 100
    Continue first when asked; slow for /slow."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target, fields, words = parse_head(head)
            headers = dict(fields)
            if headers.get("expect") == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in headers.get("transfer-encoding", ""):
                body = b""
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                    body += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            else:
                body = await reader.readexactly(int(headers.get("content-length", 0)))
            if target == "/slow":
                await asyncio.sleep(0.5)
            answer = json.dumps({"method": words[0], "target": target, "body": len(body)})
            writer.write(
                f"HTTP/1.1 200 OK\r\ncontent-length: {len(answer)}\r\n\r\n{answer}".encode()
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def fake_management(states: dict[str, list[str]]):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target, _, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if target == "/models":
            body = {"models": [{"modelName": name} for name in states]}
        else:
            name = target.split("/")[2]
            workers = [{"id": str(i), "status": s} for i, s in enumerate(states[name])]
            body = [{"modelName": name, "modelVersion": "2.1", "workers": workers}]
        text = json.dumps(body)
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {len(text)}\r\n\r\n{text}".encode())
        await writer.drain()
        writer.close()

    return serve


def model_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for name, model_format in (("fast", "int8"), ("slow", "torchscript")):
        with zipfile.ZipFile(store / f"{name}.mar", "w") as archive:
            config = {"handler": {"model_format": model_format}}
            archive.writestr("model-config.yaml", yaml.safe_dump(config))
    return store


async def exchange(port: int, data: bytes, responses: int = 1) -> list[tuple[int, bytes]]:
    """Send raw bytes on one connection; the responses read back (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    found = []
    for _ in range(responses):
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields, _ = parse_head(head)
        while status == "100":
            head = await reader.readuntil(b"\r\n\r\n")
            status, fields, _ = parse_head(head)
        found.append((int(status), await reader.readexactly(int(dict(fields)["content-length"]))))
    writer.close()
    return found


async def with_door(tmp_path: Path, states: dict[str, list[str]], check) -> None:
    inference, management = tmp_path / "inference.sock", tmp_path / "management.sock"
    upstream = await asyncio.start_unix_server(fake_torchserve, str(inference))
    manager = await asyncio.start_unix_server(fake_management(states), str(management))
    registry = ModelRegistry(UnixHTTP(management), model_store(tmp_path))
    door = FrontDoor(inference, registry)
    server = await asyncio.start_server(door.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await check(port, door, server)
    finally:
        server.close()
        upstream.close()
        manager.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


def test_pipelined_requests_are_answered_in_order(tmp_path) -> None:
    async def check(port, door, server):
        slow_then_fast = (
            b"POST /slow HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"
            b"PUT /predictions/fast HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n3\r\nyou\r\n0\r\n\r\n"
            b"POST /v2/models/fast/versions/2.1/infer HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        )
        answers = [json.loads(body) for _, body in await exchange(port, slow_then_fast, 3)]
        assert answers == [
            {"method": "POST", "target": "/slow", "body": 3},
            {"method": "PUT", "target": "/predictions/fast", "body": 5},
            {"method": "POST", "target": "/predictions/fast/2.1", "body": 0},  # versioned v2
        ]
        expect = b"PUT /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nbody"
        assert json.loads((await exchange(port, expect))[0][1])["body"] == 4

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))


def test_readiness_follows_the_workers(tmp_path) -> None:
    async def check(port, door, server):
        ready = dict(await exchange(port, get("/v2/models/fast/ready")))
        assert ready == {200: b'{"name":"fast","ready":true}'}
        loading = dict(await exchange(port, get("/v2/models/slow/versions/2.1/ready")))
        assert loading == {503: b'{"name":"slow","ready":false}'}
        assert (await exchange(port, get("/v2/health/ready")))[0][0] == 503
        assert (await exchange(port, get("/v2/models/none/ready")))[0][0] == 404
        status, body = (await exchange(port, get("/v2/models/fast")))[0]
        assert status == 200 and json.loads(body)["platform"] == "openvino_int8"

    asyncio.run(with_door(tmp_path, {"fast": ["READY"], "slow": ["UNLOADING"]}, check))


@pytest.mark.parametrize(
    "request_", [b"CONNECT example.org:443 HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
)
def test_what_is_not_http_to_this_server_is_a_400(tmp_path, request_) -> None:
    async def check(port, door, server):
        ((status, body),) = await exchange(port, request_)
        assert status == 400 and "is not served" in json.loads(body)["error"]

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))


def test_a_stop_answers_what_was_accepted_and_closes_idle_connections(tmp_path) -> None:
    async def check(port, door, server):
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy = asyncio.ensure_future(exchange(port, b"POST /slow HTTP/1.1\r\n\r\n"))
        await asyncio.sleep(0.1)
        server.close()
        await door.drain(5)
        assert json.loads((await busy)[0][1])["target"] == "/slow"
        assert await idle_reader.read() == b""  # closed without a word
        idle_writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))


def test_a_request_sent_as_the_stop_begins_on_a_kept_open_connection_is_answered(tmp_path):
    async def check(port, door, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PUT /first HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(dict(parse_head(head)[1])["content-length"]))
        server.close()
        stopping = asyncio.ensure_future(door.drain(5))
        await asyncio.sleep(0)
        writer.write(b"PUT /second HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        status, fields, _ = parse_head(head)
        body = await reader.readexactly(int(dict(fields)["content-length"]))
        assert (status, json.loads(body)["target"]) == ("200", "/second")
        assert dict(fields).get("connection") == "close" or await reader.read() == b""
        await stopping
        writer.close()

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))


def test_an_answer_relayed_during_a_stop_tells_the_client_to_close(tmp_path) -> None:
    """A kept-open connection whose request is in flight when the stop begins: its answer says
    ``Connection: close``, so the client's next request goes to a new connection (refused)
    instead of one the door is closing."""

    async def check(port, door, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /slow HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        await asyncio.sleep(0.1)
        server.close()
        stopping = asyncio.ensure_future(door.drain(5))
        status, fields, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
        assert status == "200" and dict(fields)["connection"] == "close"
        body = await reader.readexactly(int(dict(fields)["content-length"]))
        assert json.loads(body)["target"] == "/slow"
        assert await reader.read() == b""
        await stopping
        writer.close()

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))


def test_a_closing_head_replaces_what_the_response_said() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 2\r\n\r\n"
    status, fields, _ = parse_head(closing_head(head))
    assert status == "200"
    assert fields == [("content-length", "2"), ("connection", "close")]


def test_without_torchserve_behind_it_the_door_answers_503_retry_later(tmp_path) -> None:
    """While TorchServe starts (or after it stopped) its socket is missing: a request gets a
    503 with Retry-After, not a connection closed under it."""

    async def check(port, door, server):
        door.upstream = tmp_path / "not-yet.sock"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PUT /predictions/fast HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        status, fields, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
        body = await reader.readexactly(int(dict(fields)["content-length"]))
        assert (status, dict(fields)["retry-after"]) == ("503", "1")
        assert "starting or stopping" in json.loads(body)["error"]
        assert await reader.read() == b""
        writer.close()

    asyncio.run(with_door(tmp_path, {"fast": ["READY"]}, check))
