"""Turn an eager torchvision model into the serialized file an archive serves.

Each format is one exporter function in :data:`EXPORTERS`; every exporter's output is loaded back
and checked against the eager model (:mod:`resnet_mar.parity`) before the build goes on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from resnet_mar.parity import Forward

#: torch 2.14 marks TorchScript deprecated (in favour of torch.export); it still works, and its
#: four warnings per model would bury the build's own progress lines.
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"

Exporter = Callable[[torch.nn.Module, Path, int], Forward]


def prepare_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode (batch norm uses running stats) and no gradients: what serving needs."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def export_torchscript(model: torch.nn.Module, path: Path, crop_size: int) -> Forward:
    """``torch.jit.script`` then freeze: the graph is compiled (control flow kept, unlike
    tracing), weights become constants and batch norm folds into the convolutions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION)
        frozen = torch.jit.freeze(torch.jit.script(model))
        torch.jit.save(frozen, str(path))
        return torch.jit.load(str(path), map_location="cpu")


EXPORTERS: dict[str, tuple[str, Exporter]] = {
    "torchscript": (".pt", export_torchscript),
}
