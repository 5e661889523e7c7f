"""Building a model to train: pretrained-weight resolution, the new head and the freeze policy.

The backbones themselves are listed once, in ``dogbreed.runtime.network.BACKBONES`` (shipped in
every artifact, so a model can be rebuilt from its artifact alone).
"""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.runtime import network
from dogbreed.runtime.loading import read_tensors
from dogbreed.runtime.network import Backbone, replace_head
from dogbreed.runtime.presets import EvalPreset

log = logging.getLogger(__name__)


def registered(name: str) -> Backbone:
    """The registry's entry for ``name``; an unknown name is one line listing the valid ones."""
    try:
        return network.backbone(name)
    except ValueError as exc:
        raise DogbreedError(str(exc)) from None


def weights_enum(backbone: str) -> models.WeightsEnum:
    """torchvision's weights the backbone starts from (metadata only: nothing is downloaded)."""
    return models.get_model_weights(backbone)[registered(backbone).weights]


def eval_preset(backbone: str, image_size: int | None = None) -> EvalPreset:
    """The eval transform of the backbone's weights (read offline from torchvision's metadata)."""
    t = weights_enum(backbone).transforms()
    preset = EvalPreset(
        crop_size=t.crop_size[0],
        resize_size=t.resize_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    return preset if image_size in (None, preset.crop_size) else preset.with_crop(image_size)


def download_weights(weights: models.WeightsEnum) -> Path:
    """torchvision's file for these weights, downloaded once into torch's hub cache."""
    url = weights.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=None, progress=True)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DogbreedError(
            f"cannot download {weights} from {url} ({getattr(exc, 'reason', exc)}); "
            f"copy that file to {target}, or pass --weights PATH, or train with --no-pretrained"
        ) from None
    return target


def load_backbone_weights(model: nn.Module, backbone: str, path: str | os.PathLike) -> None:
    """Load a torchvision state dict into the 1000-way model; the head is replaced afterwards."""
    try:
        state = read_tensors(remote.staged_file(path))
    except FileNotFoundError:
        raise DogbreedError(f"weights file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DogbreedError(f"weights file {path} is unreadable ({exc})") from None
    if not isinstance(state, dict):
        raise DogbreedError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    head = registered(backbone).head
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        raise DogbreedError(
            f"weights file {path} does not fit {backbone}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[0]})"
        )


def imagenet_head(backbone: str, *, pretrained: bool = True, weights: str | None = None) -> dict | None:
    """The 1000-way ImageNet head the backbone's weights came with ({"weight", "bias"}), read again
    from the same file (the trained model has the new head in its place); None for random weights."""
    if not (weights or pretrained):
        return None
    path = weights or download_weights(weights_enum(backbone))
    head = registered(backbone).head
    state = read_tensors(remote.staged_file(path))
    try:
        found = {"weight": state[f"{head}.weight"], "bias": state[f"{head}.bias"]}
    except (KeyError, TypeError):
        raise DogbreedError(f"weights file {path} has no ImageNet head ({head}.weight and {head}.bias): "
                            f"--reject imagenet needs it; choose another --reject") from None
    if found["weight"].shape[0] != 1000:
        raise DogbreedError(f"weights file {path} has a {found['weight'].shape[0]}-way head, not ImageNet's 1000: "
                            f"--reject imagenet needs it; choose another --reject")
    return found


def build_model(
    backbone: str, num_classes: int, *, pretrained: bool = True, weights: str | None = None
) -> tuple[nn.Module, str]:
    """The backbone with a new ``num_classes``-way head; returns (model, where its weights came from)."""
    registered(backbone)
    model = models.get_model(backbone, weights=None)
    if weights:
        load_backbone_weights(model, backbone, weights)
        source = f"file:{Path(weights).name}"
    elif pretrained:
        enum = weights_enum(backbone)
        load_backbone_weights(model, backbone, download_weights(enum))
        source = str(enum)
    else:
        source = "random-init"
    replace_head(model, backbone, num_classes)
    return model, source


def trainable_paths(backbone: str, train_layers: str) -> tuple[str, ...]:
    entry = registered(backbone)
    return {"head": (entry.head,), "layer4": (*entry.last_stage, entry.head), "all": ("",)}[train_layers]


def _within(path: str, roots: tuple[str, ...]) -> bool:
    return any(root == "" or path == root or path.startswith(root + ".") for root in roots)


def _contains(path: str, roots: tuple[str, ...]) -> bool:
    return any(root.startswith(path + ".") or path == "" for root in roots)


def frozen_modules(model: nn.Module, roots: tuple[str, ...]) -> list[nn.Module]:
    """The largest submodules that hold no trainable path: these stay frozen and in eval mode."""
    out: list[nn.Module] = []

    def walk(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if _within(child_path, roots):
                continue
            if _contains(child_path, roots):
                walk(child, child_path)
            else:
                out.append(child)

    walk(model, "")
    return out


def freeze(model: nn.Module, backbone: str, train_layers: str) -> list[nn.Module]:
    """Freeze everything outside ``train_layers``; returns the frozen modules (see ``train_mode``)."""
    frozen = frozen_modules(model, trainable_paths(backbone, train_layers))
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model.train()``, except that frozen parts keep their BatchNorm statistics and no dropout."""
    model.train()
    for module in frozen:
        module.eval()

