"""The backbone registry and the network: a torchvision classifier whose last layer is a new head.

The state dict keeps torchvision's own key names, so ``model.pth`` also loads into
``torchvision.models.get_model(backbone, num_classes=C)`` with no dogbreed code at all.
Shipped verbatim inside every artifact (``code/network.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision import models

POOL = "avgpool"  # every backbone's global average pooling: its input is the last stage's feature maps


@dataclass(frozen=True)
class Backbone:
    """Everything dogbreed needs to know about one torchvision classifier."""

    head: str  # dotted path of the final nn.Linear, replaced by the new head
    last_stage: tuple[str, ...]  # modules unfrozen by ``--train-layers layer4`` (with the head)
    weights: str  # torchvision weights the backbone starts from: its best ImageNet recipe
    # the head reads only the average of the last stage's maps (a linear layer after the pooling):
    # the class activation map is exact (``explain.py``); elsewhere Grad-CAM is what explains it
    cam: bool = True


# To add a backbone: one entry here (torchvision's model name), nothing else.
BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("fc", ("layer4",), "IMAGENET1K_V1"),
    "resnet34": Backbone("fc", ("layer4",), "IMAGENET1K_V1"),
    "resnet50": Backbone("fc", ("layer4",), "IMAGENET1K_V2"),
    "resnet101": Backbone("fc", ("layer4",), "IMAGENET1K_V2"),
    "efficientnet_v2_s": Backbone("classifier.1", ("features.6", "features.7"), "IMAGENET1K_V1"),
    "convnext_tiny": Backbone("classifier.2", ("features.7", "classifier.0"), "IMAGENET1K_V1", cam=False),  # LayerNorm after pooling
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


def split_at_pool(body: nn.Module) -> fx.GraphModule:
    """``body`` (a classifier whose head is an identity) traced so that one pass returns the last
    stage's feature maps, as its pooling takes them, beside the embedding it returned: (maps,
    embedding). The same modules and weights, under the same names."""
    gm = fx.symbolic_trace(body)
    pool = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == POOL), None)
    if pool is None:
        raise ValueError(f"{type(body).__name__} has no {POOL} to split its feature maps at")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output.args = ((pool.args[0], output.args[0]),)
    gm.recompile()
    return gm


def class_activation_maps(maps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The head's weights (classes x channels) applied at every position of the feature maps
    (batch x channels x h x w): batch x classes x h x w, whose mean over the positions plus the
    head's bias is each class's logit."""
    return F.conv2d(maps, weight.to(maps.dtype)[:, :, None, None])


class WithFeatures(nn.Module):
    """A classifier split at its head, so that one pass gives the logits and the embedding they came
    from (what the "not a dog" score reads), and where the backbone allows it the class activation
    maps (``class_maps``; None where it does not). ``forward`` still gives the logits alone, so that
    SageMaker's default TorchScript handler can run an export of it."""

    def __init__(self, network: nn.Module, name: str):
        super().__init__()
        self.head = get_head(network, name)
        set_head(network, name, nn.Identity())
        self.body = split_at_pool(network)  # (maps, embedding) from one pass
        if not backbone(name).cam:
            self.class_maps = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)[1])

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)[1]
        return self.head(features), features

    def class_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, embedding, class activation maps) from one pass."""
        maps, features = self.body(x)
        return self.head(features), features, class_activation_maps(maps, self.head.weight)


class Autocast(nn.Module):
    """The network under autocast to ``dtype`` (bf16): the same weights, half-width arithmetic
    where the hardware has it. Outputs stay in that dtype; the pipeline turns them to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.model, self.dtype = model, dtype
        if getattr(model, "class_maps", None) is None:
            self.class_maps = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model.logits_and_features(x)

    def class_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model.class_maps(x)


class OnnxModel:
    """An ONNX Runtime session that takes and returns torch tensors, like the eager network. An
    export with two outputs gives the embedding too (``logits_and_features``), one with three the
    class activation maps (``class_maps``). It runs as many threads as torch does
    (``torch.set_num_threads``), so one setting governs both."""

    def __init__(self, path: str):
        import onnxruntime  # only for artifacts exported with `dogbreed export --format onnx|int8`

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # its own warnings about unused initialisers are not the user's business
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]
        outputs = len(self.outputs)
        if outputs < 2:  # an export from before embeddings were one of its outputs
            self.logits_and_features = None
        if outputs < 3:  # from before class activation maps were (or of a backbone without them)
            self.class_maps = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch, 1)[0]

    def logits_and_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self._run(batch, 2)
        return logits, features

    def class_maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, features, maps = self._run(batch, 3)
        return logits, features, maps

    def _run(self, batch: torch.Tensor, outputs: int) -> list[torch.Tensor]:
        """The graph's first ``outputs`` outputs."""
        images = batch.detach().float().contiguous().cpu().numpy()
        return [torch.from_numpy(out) for out in self.session.run(self.outputs[:outputs], {self.input: images})]

    def eval(self) -> "OnnxModel":
        return self
