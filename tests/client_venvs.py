"""Clients this project did not write (tritonclient, KServe's SDK), run from tests/clients/ in
their own venvs (make test builds them: the two clash in one process)."""

from __future__ import annotations

import json
import subprocess

from resnet_mar.server_doors import REPO_ROOT

VENVS = REPO_ROOT / ".venv-clients"


def run_client(venv: str, script: str, job: object) -> object:
    """Run tests/clients/<script> in .venv-clients/<venv> with ``job`` on stdin; its JSON."""
    python = VENVS / venv / "bin" / "python"
    assert python.exists(), f"{python} is missing: run make test (it builds the client venvs)"
    done = subprocess.run(
        [str(python), str(REPO_ROOT / "tests" / "clients" / script)],
        input=json.dumps(job), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
