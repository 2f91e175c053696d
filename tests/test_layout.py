"""The repository's structure holds together: one list per thing, and the README's map of the
tree is the tree."""

from __future__ import annotations

import re
import subprocess

import tomllib

from resnet_mar.export import EXPORTERS
from resnet_mar.torchserve import REPO_ROOT
from resnet_serving import model_runtimes
from resnet_serving.serving_schema import MODEL_FORMATS


def test_the_handler_is_one_entry_module_and_one_package() -> None:
    """handlers/ holds TorchServe's entry point and the package beside it, nothing else: what
    archive.sh packs and pyproject installs for the build side and the tests."""
    listed = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert listed["py-modules"] == ["resnet_handler"] and "resnet_serving" in listed["packages"]
    assert sorted(
        p.name for p in (REPO_ROOT / "handlers").iterdir() if p.name != "__pycache__"
    ) == [
        "resnet_handler.py",
        "resnet_serving",
    ]


def test_every_format_is_exported_and_loaded() -> None:
    assert list(EXPORTERS) == list(MODEL_FORMATS) == list(model_runtimes.LOADERS)


def test_the_readme_layout_is_the_tree() -> None:
    """Every top-level file and folder the repository tracks appears in README's "Layout"
    block, and everything that block names exists."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = {m.rstrip("/") for m in re.findall(r"(?m)^([\w.\-/]+)", block)}
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    ).stdout.split()
    top = {path.split("/", 1)[0] for path in tracked} - {".gitignore", ".ci"}
    assert named == top, (
        f"README lists {sorted(named - top)} that do not exist; misses {sorted(top - named)}"
    )


def test_the_readme_variables_are_make_helps() -> None:
    """README's variables table names exactly the variables ``make help`` lists."""
    helped = subprocess.run(
        ["make", "--no-print-directory", "help"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.split("Variables", 1)[1]
    listed = set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=", helped))
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    named = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])
    }
    assert named == listed, f"README lacks {listed - named}; make help lacks {named - listed}"


def test_the_readme_targets_are_make_helps() -> None:
    """README's rows of make targets name exactly the targets ``make help`` lists (the
    Makefile's own, whatever other makefiles, such as make cpp's dependency files, it reads)."""
    helped = subprocess.run(
        ["make", "--no-print-directory", "help"], capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout.split("Variables", 1)[0]
    listed = set(re.findall(r"^  make (\S+)", helped, flags=re.MULTILINE)) - {"help"}
    readme = (REPO_ROOT / "README.md").read_text()
    named = {
        target
        for row in readme.splitlines()
        if row.startswith("| `make ")
        for target in re.findall(r"`make ([a-z-]+)`", row.split("|")[1])
    }
    assert named == listed, f"README lacks {listed - named}; make help lacks {named - listed}"
