"""Building what the setups serve: our archives (``archive.sh``, as ``make archive`` packs them),
the stock archives of the same serialized files, and the empty handler's archive (the floor)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from resnet_mar.bench import floor_handler, progress
from resnet_mar.bench.setups import UNTRAINED_INT8_GATE
from resnet_mar.build import BuildRequest, build_model
from resnet_mar.export import EXPORTERS, JIT_DEPRECATION
from resnet_mar.torchserve import REPO_ROOT
from resnet_mar.weights import UNTRAINED

#: The empty handler's archive, its model name and the folder of its store.
FLOOR = "floor"


@dataclass(frozen=True)
class Workspace:
    """Where a run keeps its builds, archives and server folders. ``root`` must be absolute:
    TorchServe resolves paths in its server folder."""

    root: Path

    def build(self, model_format: str) -> Path:
        return self.root / model_format / "build"

    def store(self, model_format: str, stock: bool = False) -> Path:
        return self.root / ("stock" if stock else "") / model_format / "model_store"

    def model_config(self, name: str) -> Path:
        """The model-config.yaml the TorchScript build wrote for ``name``: its preprocessing and
        serving settings, which every format shares."""
        return self.build("torchscript") / name / "model-config.yaml"

    def server(self, label: str) -> Path:
        return self.root / "servers" / label

    def clean(self) -> None:
        """Remove what an earlier run left (only the folders this class names)."""
        for folder in (*EXPORTERS, "stock", FLOOR, "servers"):
            shutil.rmtree(self.root / folder, ignore_errors=True)


def build_and_archive(work: Workspace, model_format: str, models: list[str]) -> dict[str, Path]:
    """Each model built as ``make script`` does (int8 against the gate untrained networks can
    pass) and packed by ``archive.sh``; returns each model's serialized file."""
    files = {}
    for name in models:
        progress(f"building {name} ({model_format}, untrained weights, served alone)")
        request = BuildRequest(
            architecture=name,
            weights=UNTRAINED,
            model_format=model_format,
            int8_min_agreement=UNTRAINED_INT8_GATE.min_agreement,
            int8_max_error=UNTRAINED_INT8_GATE.max_error,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
            files[name] = build_model(request, work.build(model_format)).model_file
    progress(f"archiving {', '.join(models)} ({model_format}) with archive.sh")
    build, store = work.build(model_format), work.store(model_format)
    run_quietly([str(REPO_ROOT / "archive.sh"), "-b", str(build), "-s", str(store), *models])
    return files


def archive_stock(work: Workspace, model_format: str, models: list[str]) -> None:
    """The same serialized file and label map behind TorchServe's own handler, no model-config
    (so TorchServe's defaults decide workers and batching)."""
    build, store = work.build(model_format), work.store(model_format, stock=True)
    for name in models:
        progress(f"archiving {name} for the stock setup (--handler image_classifier)")
        serialized = build / f"{name}{EXPORTERS[model_format][0]}"
        options = ["--serialized-file", str(serialized), "--handler", "image_classifier"]
        options += ["--extra-files", str(build / name / "index_to_name.json")]
        model_archiver(name, store, options)


def archive_floor(work: Workspace, model_config: Path) -> None:
    """The empty handler (floor_handler.py) with the serving settings of our ``model_config``
    (workers, batching, queue; its handler section dropped), so that TorchServe batches and
    queues for it as for our models."""
    settings = yaml.safe_load(model_config.read_text())
    settings.pop("handler")
    store = work.store(FLOOR)
    store.mkdir(parents=True, exist_ok=True)
    config = store.parent / "model-config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    progress(f"archiving {FLOOR} (the empty handler, {model_config.name}'s serving settings)")
    options = ["--handler", floor_handler.__file__, "--config-file", str(config)]
    model_archiver(FLOOR, store, options)


def model_archiver(name: str, store: Path, options: list[str]) -> None:
    """``torch-model-archiver`` from this environment: ``name``'s archive into ``store``."""
    store.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    command = [str(archiver), "--model-name", name, "--version", "1.0", "--force"]
    run_quietly([*command, *options, "--export-path", str(store)])


def run_quietly(command: list[str]) -> None:
    """Run a tool; on failure, raise with its output (a broken run must not look like a result)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
