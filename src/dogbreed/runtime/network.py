"""Network architectures: a torchvision classifier whose last layer is a new head.

The state dict keeps torchvision's own key names, so ``model.pth`` also loads into
``torchvision.models.get_model(backbone, num_classes=C)`` with no dogbreed code at all.
Shipped verbatim inside every artifact (``code/network.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision import models


@dataclass(frozen=True)
class Arch:
    """Where a torchvision classifier keeps its head and its last feature stage."""

    head: str  # dotted path of the final nn.Linear
    last_stage: tuple[str, ...]  # modules unfrozen by ``--train-layers layer4``


ARCHS: dict[str, Arch] = {
    "resnet18": Arch("fc", ("layer4",)),
    "resnet34": Arch("fc", ("layer4",)),
    "resnet50": Arch("fc", ("layer4",)),
    "resnet101": Arch("fc", ("layer4",)),
    "efficientnet_v2_s": Arch("classifier.1", ("features.6", "features.7")),
    "convnext_tiny": Arch("classifier.2", ("features.7", "classifier.0")),
}


def get_submodule_parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attr


def get_head(model: nn.Module, backbone: str) -> nn.Linear:
    return model.get_submodule(ARCHS[backbone].head)


def set_head(model: nn.Module, backbone: str, module: nn.Module) -> None:
    parent, attr = get_submodule_parent(model, ARCHS[backbone].head)
    setattr(parent, attr, module)


def build_network(backbone: str, num_classes: int) -> nn.Module:
    """The architecture with a ``num_classes``-way head and random weights."""
    if backbone not in ARCHS:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(ARCHS)}")
    return models.get_model(backbone, weights=None, num_classes=num_classes)


def replace_head(model: nn.Module, backbone: str, num_classes: int) -> nn.Linear:
    """Swap the pretrained 1000-way head for a new ``num_classes``-way one; returns the new head."""
    old = get_head(model, backbone)
    head = nn.Linear(old.in_features, num_classes)
    set_head(model, backbone, head)
    return head


class OnnxModel:
    """An ONNX Runtime session that takes and returns torch tensors, like the eager network."""

    def __init__(self, path: str):
        import onnxruntime  # only for artifacts exported with `dogbreed export --format onnx`

        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.detach().float().contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: images})[0])

    def eval(self) -> "OnnxModel":
        return self


@torch.no_grad()
def predict_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities in fp32 for a batch of preset-transformed images."""
    return torch.softmax(model(batch).float(), dim=1)
