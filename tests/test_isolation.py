"""make serve where no network namespace can be made (a container's seccomp profile, AppArmor's
user-namespace restriction, another OS): ISOLATION=auto serves without one and says in one line
what then stays reachable; ISOLATION=namespace refuses, naming the real cause."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from resnet_mar.server_doors import (
    REPO_ROOT,
    DoorError,
    ServerFolder,
    isolation_prefix,
    namespace_cause,
)
from resnet_mar.torchserve import ServerState
from tests.reference import assert_served_like_reference
from tests.seccomp_filter import forbid_unshare
from tests.served_models import one_model_server_files

NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3")


def fake_proc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


ALL_CAPS = "Seccomp:\t0\nCapEff:\t000001ffffffffff\n"


@pytest.mark.parametrize(
    ("files", "euid", "says"),
    [
        ({"self/status": "Seccomp:\t2\nCapEff:\t00000000a80425fb\n"}, 0, "seccomp filter"),
        ({"self/status": "Seccomp:\t2\n"}, 1000, "seccomp filter"),
        (
            {"self/status": ALL_CAPS, "sys/kernel/apparmor_restrict_unprivileged_userns": "1"},
            1000,
            "AppArmor restricts unprivileged user namespaces",
        ),
        (
            {"self/status": ALL_CAPS, "sys/user/max_user_namespaces": "0"},
            1000,
            "user.max_user_namespaces=0",
        ),
        ({"self/status": "Seccomp:\t0\nCapEff:\t00000000a80425fb\n"}, 0, "lacks CAP_SYS_ADMIN"),
    ],
)
def test_the_refusal_names_the_real_cause(tmp_path, files, euid, says) -> None:
    assert says in namespace_cause(fake_proc(tmp_path, files), euid)


def test_apparmor_is_not_blamed_for_root(tmp_path) -> None:
    proc = fake_proc(
        tmp_path, {"self/status": ALL_CAPS, "sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    )
    assert "AppArmor" not in namespace_cause(proc, 0)


def test_isolation_modes() -> None:
    assert isolation_prefix("none") == ([], "ISOLATION=none")
    with pytest.raises(DoorError, match="ISOLATION must be one of"):
        isolation_prefix("sometimes")


def probe_as(user: int | None) -> subprocess.CompletedProcess:
    """``isolation_prefix`` for auto and namespace, under the filter, as ``user`` (this
    machine's Python when not root: the venv's interpreter lives in root's home)."""
    python = str(SYSTEM_PYTHON) if user else sys.executable
    code = (
        "from resnet_mar.server_doors import DoorError, isolation_prefix, without_namespace\n"
        "prefix, why = isolation_prefix('auto')\n"
        "print(prefix, without_namespace('grpc_inference_port=7070', why))\n"
        "try:\n    isolation_prefix('namespace')\nexcept DoorError as err:\n    print(err)\n"
    )
    return subprocess.run(
        [python, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        preexec_fn=forbid_unshare, user=user, group=user, extra_groups=[] if user else None,
    )  # fmt: skip


@pytest.mark.parametrize("user", [None, NOBODY], ids=["root", "nobody"])
def test_under_a_container_profile_auto_serves_without_and_namespace_refuses(user) -> None:
    if user:
        assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed to probe as another user"
    done = probe_as(user)
    assert done.returncode == 0, done.stderr
    auto, refused = done.stdout.splitlines()
    assert auto.startswith("[] warning: serving without a network namespace (a seccomp filter")
    assert "inference on 127.0.0.1:7070 and management on 127.0.0.1:7071" in auto
    assert refused.startswith("cannot create a network namespace: a seccomp filter forbids it")


@pytest.mark.integration
def test_make_serve_under_a_container_profile(
    model_store: Path, tmp_path: Path, photo_bytes, references
) -> None:
    """As root under a Docker-like filter: auto starts with its one-line warning and answers as
    the reference does; namespace refuses to start and leaves nothing running."""
    store, config = one_model_server_files(model_store, tmp_path)

    def serve(folder: Path, isolation: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "resnet_mar", "serve", "--config", str(config),
             "--model-store", str(store), "--folder", str(folder), "--isolation", isolation],
            capture_output=True, text=True, timeout=420, cwd=REPO_ROOT,
            preexec_fn=forbid_unshare,
        )  # fmt: skip

    refused = serve(tmp_path / "refused", "namespace")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cannot create a network namespace: a seccomp filter" in refused.stderr
    assert not ServerFolder(tmp_path / "refused").state.exists()

    folder = ServerFolder(tmp_path / "run")
    served = serve(folder.root, "auto")
    try:
        assert served.returncode == 0, served.stdout + served.stderr
        (warning,) = [line for line in served.stderr.splitlines() if line.startswith("warning:")]
        assert "seccomp filter" in warning and "management on 127.0.0.1:" in warning
        state = ServerState.load(folder)
        assert_served_like_reference(
            state.endpoints.inference, references["resnet18"], photo_bytes["coffee"]
        )
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "resnet_mar", "stop", "--folder", str(folder.root)],
            capture_output=True, text=True, timeout=180, cwd=REPO_ROOT,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.mark.integration
def test_make_serve_as_another_user_under_a_container_profile(
    model_store: Path, photo_bytes, references
) -> None:
    """As ``nobody`` under the same filter: serve starts with its warning, answers, and stops.
    The venv's interpreter lives in root's home, out of another user's reach, so ``nobody`` runs
    this machine's Python on the venv's packages (same CPython version), and TorchServe through
    a ``torchserve`` that does the same."""
    assert SYSTEM_PYTHON.exists(), f"{SYSTEM_PYTHON} is needed to serve as another user"
    home = Path(tempfile.mkdtemp(prefix="serve-as-nobody-"))
    try:
        store, config = one_model_server_files(model_store, home)
        launcher = home / "bin" / "torchserve"
        launcher.parent.mkdir()
        launcher.write_text(
            f"#!/bin/sh\nexec {SYSTEM_PYTHON} -c 'import sys; from ts.model_server import start; "
            'sys.exit(start())\' "$@"\n'
        )
        launcher.chmod(0o755)
        for path in [home, *home.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        site = sysconfig.get_paths()["purelib"]
        env = {
            **os.environ,
            "HOME": str(home),
            "PATH": f"{launcher.parent}:{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join([site, str(REPO_ROOT), str(REPO_ROOT / "handlers")]),
        }

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(SYSTEM_PYTHON), "-m", "resnet_mar", *args], cwd=home, env=env,
                capture_output=True, text=True, timeout=420, preexec_fn=forbid_unshare,
                user=NOBODY, group=NOBODY, extra_groups=[],
            )  # fmt: skip

        folder = ServerFolder(home / "run")
        served = cli("serve", "--config", str(config), "--model-store", str(store),
                     "--folder", str(folder.root))  # fmt: skip
        try:
            assert served.returncode == 0, served.stdout + served.stderr
            (warning,) = [line for line in served.stderr.splitlines() if "warning:" in line]
            assert "seccomp filter" in warning
            state = ServerState.load(folder)
            assert_served_like_reference(
                state.endpoints.inference, references["resnet18"], photo_bytes["rocket"]
            )
        finally:
            stopped = cli("stop", "--folder", str(folder.root))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
