"""The backbone registry and the network: a torchvision classifier whose last layer is a new head.

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
class Backbone:
    """Everything dogbreed needs to know about one torchvision classifier."""

    head: str  # dotted path of the final nn.Linear, replaced by the new head
    last_stage: tuple[str, ...]  # modules unfrozen by ``--train-layers layer4`` (with the head)
    weights: str  # torchvision weights the backbone starts from: its best ImageNet recipe


# To add a backbone: one entry here (torchvision's model name), nothing else.
BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("fc", ("layer4",), "IMAGENET1K_V1"),
    "resnet34": Backbone("fc", ("layer4",), "IMAGENET1K_V1"),
    "resnet50": Backbone("fc", ("layer4",), "IMAGENET1K_V2"),
    "resnet101": Backbone("fc", ("layer4",), "IMAGENET1K_V2"),
    "efficientnet_v2_s": Backbone("classifier.1", ("features.6", "features.7"), "IMAGENET1K_V1"),
    "convnext_tiny": Backbone("classifier.2", ("features.7", "classifier.0"), "IMAGENET1K_V1"),
}


def backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}") from None


def get_head(model: nn.Module, name: str) -> nn.Linear:
    return model.get_submodule(backbone(name).head)


def set_head(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_path, _, attr = backbone(name).head.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, module)


def build_network(name: str, num_classes: int) -> nn.Module:
    """The architecture with a ``num_classes``-way head and random weights."""
    backbone(name)
    return models.get_model(name, weights=None, num_classes=num_classes)


def replace_head(model: nn.Module, name: str, num_classes: int) -> nn.Linear:
    """Swap the pretrained 1000-way head for a new ``num_classes``-way one; returns the new head."""
    head = nn.Linear(get_head(model, name).in_features, num_classes)
    set_head(model, name, head)
    return head


class WithFeatures(nn.Module):
    """A classifier split at its head, so that one pass gives the logits and the embedding they came
    from (what the "not a dog" score reads). ``forward`` still gives the logits alone, so that
    SageMaker's default TorchScript handler can run an export of it."""

    def __init__(self, network: nn.Module, name: str):
        super().__init__()
        self.head = get_head(network, name)
        set_head(network, name, nn.Identity())
        self.body = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class Autocast(nn.Module):
    """The network under autocast to ``dtype`` (bf16): the same weights, half-width arithmetic
    where the hardware has it. Outputs stay in that dtype; the pipeline turns them to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model.logits_and_features(x)


class OnnxModel:
    """An ONNX Runtime session that takes and returns torch tensors, like the eager network. An
    export with two outputs gives the embedding too (``logits_and_features``). It runs as many
    threads as torch does (``torch.set_num_threads``), so one setting governs both."""

    def __init__(self, path: str):
        import onnxruntime  # only for artifacts exported with `dogbreed export --format onnx|int8`

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its own warnings about unused initialisers are not the user's business
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        if len(self.session.get_outputs()) < 2:  # an export from before embeddings were one of its outputs
            self.logits_and_features = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch)[0]

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self._run(batch)[:2]
        return logits, features

    def _run(self, batch: torch.Tensor) -> list[torch.Tensor]:
        images = batch.detach().float().contiguous().cpu().numpy()
        return [torch.from_numpy(out) for out in self.session.run(None, {self.input: images})]

    def eval(self) -> "OnnxModel":
        return self
