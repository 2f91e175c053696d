"""Integration: no single request, on any door the server opens, may exhaust it, hang it or fail
other requests. Each hole measured before is reproduced here against a server run as make serve
runs it (conftest.py's session server), and must now be closed."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from resnet_mar.server_doors import REPO_ROOT
from resnet_mar.torchserve import RunningServer
from tests.reference import assert_same_answer, reference_answer
from tests.server_probes import (
    java_pid,
    listening_tcp,
    open_files,
    peak_rss_mb,
    socket_inodes,
    worker_pids,
)

pytestmark = pytest.mark.integration

NOBODY = 65534


def predict(server: RunningServer, model: str, body: bytes, **kwargs) -> requests.Response:
    url = f"{server.endpoints.inference}/predictions/{model}"
    return requests.put(url, data=body, timeout=120, **kwargs)


def test_no_tcp_port_of_torchserve_is_reachable_from_this_host(server: RunningServer) -> None:
    """TorchServe 0.12 always opens gRPC (its management service scales workers without any
    credential): the server's own network namespace holds every TCP listener it opens, and
    none of its sockets is in this host's."""
    java = java_pid(server)
    assert os.readlink(f"/proc/{java}/ns/net") != os.readlink("/proc/self/ns/net")
    config = dict(re.findall(r"(?m)^(grpc_\w+_port)=(\d+)$", server.folder.config.read_text()))
    grpc = {
        int(config.get(f"grpc_{door}_port", d))
        for door, d in (("inference", 7070), ("management", 7071))
    }
    inside = listening_tcp(Path(f"/proc/{java}/net"))
    ours = socket_inodes(java)
    assert {port for inode, port in inside.items() if inode in ours} == grpc  # HTTP: unix only
    host = listening_tcp(Path("/proc/self/net"))
    assert not ours & set(host), "a TorchServe socket listens in this host's namespace"


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    """Run a command as another local user (the one every local user could be)."""
    assert os.geteuid() == 0, "this test needs root to act as another local user"
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed for this test"
    switch = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*switch, *command], capture_output=True, text=True, timeout=60)


def test_scaling_without_the_owners_folder_is_refused(server: RunningServer) -> None:
    """Management (register, unregister, scale, set-default) listens only on a unix socket in
    a folder only the server's owner may enter: another local user cannot even connect."""
    socket = Path(server.endpoints.management.removeprefix("unix:"))
    assert stat.S_ISSOCK(socket.stat().st_mode)
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    before = worker_pids(server)
    url = "http://localhost/models/resnet18?min_worker=2&max_worker=2&synchronous=true"
    attempt = as_nobody("curl", "-sS", "--unix-socket", str(socket), "-X", "PUT", url)
    assert attempt.returncode == 7, attempt  # curl: could not connect
    assert worker_pids(server) == before


def thin_image(fmt: str, size: tuple[int, int]) -> bytes:
    photo = Image.linear_gradient("L").convert("RGB").resize((max(size), 64))
    image = (
        photo.resize(size)
        if size[0] >= size[1]
        else photo.resize(size[::-1]).rotate(90, expand=True)
    )
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


#: The thinnest each format allows: 1 pixel by 65,500 (JPEG's limit), 16,383 (WebP's) or more.
EXTREME = {
    "PNG": [(65536, 1), (1, 65536)],
    "GIF": [(65535, 1), (1, 65535)],
    "TIFF": [(65536, 1), (1, 65536)],
    "WEBP": [(16383, 1), (1, 16383)],
    "JPEG": [(65500, 1), (1, 65500)],
    "BMP": [(65536, 1), (1, 65536)],
}


def test_thin_images_are_answered_exactly_with_bounded_worker_memory(
    server: RunningServer, references
) -> None:
    """A 109-byte 8192x1 PNG used to cost the worker 2 GB, and a 65536x1 one 49 s and 19.9 GB
    (the short side was resized to 256 before cropping). Now every format's thinnest image is
    answered at once, the worker's peak memory does not move, and a thin image whose reference
    is still affordable in this process gets exactly that reference's answer."""
    (worker,) = worker_pids(server)["resnet18"]
    peak_before = peak_rss_mb(worker)
    for fmt, sizes in EXTREME.items():
        for size in sizes:
            response = predict(server, "resnet18", thin_image(fmt, size))
            assert response.status_code == 200, (fmt, size, response.text)
            assert len(response.json()) == 5
    assert peak_rss_mb(worker) - peak_before < 100, (peak_before, peak_rss_mb(worker))
    model, labels = references["resnet18"]
    for fmt, size in (("PNG", (600, 1)), ("GIF", (1, 600)), ("WEBP", (900, 2))):
        body = thin_image(fmt, size)
        response = predict(server, "resnet18", body)
        assert_same_answer(response.json(), reference_answer(model, labels, body))


def test_poisoned_options_among_concurrent_good_requests_fail_alone(
    server: RunningServer, references, photo_bytes
) -> None:
    """Top-k values that used to raise outside a request's own error path (5,000 digits, "³",
    "①") sent among 160 good requests: every good one equals its reference, every poisoned one
    is its own 400, whatever envelope carried it."""
    model, labels = references["resnet18"]
    photo = photo_bytes["rocket"]
    expected = reference_answer(model, labels, photo)
    poisoned = [
        {"headers": {"X-TopK": "9" * 5000}, "data": photo},
        {"files": {"data": ("a.jpg", photo)}, "data": {"topk": "³"}},
        {"json": {"data": base64.b64encode(photo).decode(), "topk": "①"}},
        {"json": {"instances": [base64.b64encode(photo).decode()], "topk": "٣"}},
    ]
    url = f"{server.endpoints.inference}/predictions/resnet18"
    jobs = [("good", {"data": photo})] * 160 + [("bad", p) for p in poisoned] * 5
    jobs = jobs[::3] + jobs[1::3] + jobs[2::3]  # spread the poisoned ones among the batches

    def send(job):
        kind, kwargs = job
        return kind, requests.put(url, timeout=300, **kwargs)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, jobs))
    for kind, response in results:
        if kind == "good":
            assert response.status_code == 200, response.text
            assert_same_answer(response.json(), expected)
        else:
            assert response.status_code == 400, response.text
            assert "ASCII digits" in response.text


def test_a_multipart_body_of_many_fields_gets_a_short_answer(server: RunningServer) -> None:
    """20,000 fields used to be listed in full in the 400 (189 KB)."""
    fields = {f"field{i}": "x" for i in range(20_000)}
    response = requests.post(
        f"{server.endpoints.inference}/predictions/resnet18", files=fields, timeout=120
    )
    assert response.status_code == 400
    assert response.json()["type"] == "MalformedMultipart"
    assert len(response.content) < 2_000 and "19990 more" in response.text


def test_worker_sockets_and_extracted_archives_stay_in_the_servers_folder(
    server: RunningServer,
) -> None:
    """TorchServe puts them in TEMP (the shared /tmp by default), where two servers collide and
    another user's stale file blocks a worker's port."""
    tmp = server.folder.tmp
    assert list(tmp.glob(".ts.sock.*")), f"no worker socket in {tmp}"
    assert list((tmp / "models").glob("*/MAR-INF/MANIFEST.json"))
    assert json.loads((server.folder.logs / "..").joinpath("server.json").read_text())
    # Nothing of it lands in the shared /tmp: each worker's socket (its command line) and every
    # file the server's processes hold open is in its own folder.
    pids = [pid for found in worker_pids(server).values() for pid in found]
    for pid in pids:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        socket_name = argv[argv.index("--sock-name") + 1]
        assert Path(socket_name).parent == tmp, socket_name
    shared = Path("/tmp").resolve()
    ours = (server.folder.root, REPO_ROOT, Path(sys.prefix).resolve())  # a checkout in /tmp too
    for pid in [java_pid(server), *pids]:
        for target in open_files(pid):
            if target.startswith("/"):
                path = Path(target)
                in_shared = shared in path.parents
                assert not in_shared or any(own in path.parents for own in ours), (
                    f"process {pid} holds {target} in the shared /tmp"
                )


def test_an_answer_too_large_is_413_beside_good_requests(server, references, photo_bytes) -> None:
    """32 one-pixel images at top-k 1000 (v1) would be an answer over TorchServe's
    max_response_size, which kills the worker and fails its batch: refused (413) before it is
    sent, while the requests around it are answered (no worker restarts: the session server
    checks at its teardown)."""
    pixel = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 90)).save(pixel, "PNG")
    instances = [base64.b64encode(pixel.getvalue()).decode()] * 32
    url = server.endpoints.inference
    model, labels = references["resnet18"]
    photo = photo_bytes["coffee"]

    def big() -> requests.Response:
        return requests.post(f"{url}/v1/models/resnet18:predict",
                             json={"instances": instances, "topk": 1000}, timeout=120)  # fmt: skip

    with ThreadPoolExecutor(max_workers=8) as pool:
        bad = [pool.submit(big) for _ in range(2)]
        good = [pool.submit(predict, server, "resnet18", photo) for _ in range(6)]
    for answer in (future.result() for future in bad):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"].startswith("AnswerTooLarge: the answer would be")
    for answer in (future.result() for future in good):
        assert answer.status_code == 200
        assert_same_answer(answer.json(), reference_answer(model, labels, photo))
