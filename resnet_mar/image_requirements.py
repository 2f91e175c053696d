"""The container image's Python packages, pinned as pyproject.toml pins them: what a server runs
(TorchServe, torch, the runtimes of every format, captum for explanations, the front door's
gRPC), never the build side (torchvision, the archiver, NNCF) nor this repo's handler modules,
which the archives carry. ``python3 image_requirements.py pyproject.toml`` prints the
requirements, torch first (the Dockerfile installs it from TORCH_INDEX).

Standard library only: the Dockerfile runs it with the image's own Python before anything is
installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

#: What runs in the image; each must be pinned (==) somewhere in pyproject.toml.
RUNTIME = (
    "torch",
    "torchserve",
    "pillow",
    "numpy",
    "pyyaml",
    "psutil",
    "grpcio",
    "grpcio-tools",
    "onnxruntime",
    "openvino",
    "captum",
    "matplotlib",
)


def pins(pyproject: Path) -> list[str]:
    """``name==version`` for each package of RUNTIME, in that order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    pinned = {}
    for spec in specs:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*", spec)
        if found:
            pinned[found.group(1).lower()] = f"{found.group(1).lower()}=={found.group(2)}"
    missing = [name for name in RUNTIME if name not in pinned]
    if missing:
        raise SystemExit(f"pyproject.toml pins none of {missing} with ==")
    return [pinned[name] for name in RUNTIME]


if __name__ == "__main__":
    print("\n".join(pins(Path(sys.argv[1]))))
