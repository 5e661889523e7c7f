"""The backbone registry: every entry builds, freezes, embeds and names its weights."""

import pytest
import torch
from torch import nn
from torchvision import models

from dogbreed.errors import DogbreedError
from dogbreed.features import feature_extractor
from dogbreed.model import build_model, freeze, registered, train_mode, weights_enum
from dogbreed.runtime.network import BACKBONES, build_network, get_head


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_freezes_embeds_and_names_its_weights(name):
    entry = BACKBONES[name]
    model, source = build_model(name, 7, pretrained=False)
    head = get_head(model, name)
    assert isinstance(head, nn.Linear) and head.out_features == 7 and source == "random-init"
    assert model.get_submodule(entry.head) is head

    frozen = freeze(model, name, "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{entry.head}.weight", f"{entry.head}.bias"}
    for stage in entry.last_stage:  # each named stage exists and layer4 unfreezes it
        model.get_submodule(stage)
    fresh, _ = build_model(name, 7, pretrained=False)
    freeze(fresh, name, "layer4")
    unfrozen = {n.rsplit(".", 1)[0] for n, p in fresh.named_parameters() if p.requires_grad}
    assert all(any(n == s or n.startswith(s + ".") for n in unfrozen) for s in entry.last_stage)

    train_mode(model, frozen)
    assert all(not m.training for m in frozen) and head.training
    extractor = feature_extractor(model, name)
    with torch.no_grad():
        features = extractor(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, head.in_features) and torch.isfinite(features).all()

    weights = weights_enum(name)  # torchvision's metadata, offline: a real enum member with a URL
    assert weights is models.get_model_weights(name)[entry.weights] and weights.url.startswith("https://")
    assert build_network(name, 7).state_dict().keys() == model.state_dict().keys()  # the artifact rebuilds it


def test_the_original_projects_backbones_are_registered():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_v2_s", "convnext_tiny"} <= set(BACKBONES)
    assert BACKBONES["resnet50"].weights == "IMAGENET1K_V2"  # not the original's V1


def test_an_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(DogbreedError, match="unknown backbone 'resnet9'; valid backbones: " + ", ".join(BACKBONES)):
        registered("resnet9")
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):  # the artifact's own code says the same
        build_network("resnet9", 3)
