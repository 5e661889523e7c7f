"""Building a model to train: weights files, the new head, the freeze policy."""

import pytest
import torch

from dogbreed.errors import DogbreedError
from dogbreed.model import build_model, freeze, train_mode

from .conftest import free_port


@pytest.mark.parametrize("train_layers, trainable_prefixes", [
    ("head", ("fc.",)), ("layer4", ("layer4.", "fc.")), ("all", ("",)),
])
def test_freeze_policy_and_gradients(train_layers, trainable_prefixes):
    model, _ = build_model("resnet18", 3, pretrained=False)
    frozen = freeze(model, "resnet18", train_layers)
    train_mode(model, frozen)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, p in model.named_parameters():
        should_train = name.startswith(trainable_prefixes)
        assert p.requires_grad == should_train, name
        assert (p.grad is not None) == should_train, name  # frozen parameters get no gradient


def test_frozen_backbone_keeps_batchnorm_statistics():
    model, _ = build_model("resnet18", 3, pretrained=False)
    frozen = freeze(model, "resnet18", "layer4")
    before = model.bn1.running_mean.clone()
    train_mode(model, frozen)
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(model.bn1.running_mean, before)  # frozen stem: statistics untouched
    assert not model.bn1.training and model.layer4.training and model.fc.training


def test_weights_file_loads_the_backbone_and_replaces_the_head(tmp_path):
    source, _ = build_model("resnet18", 1000, pretrained=False)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model, where = build_model("resnet18", 5, weights=str(tmp_path / "r18.pth"))
    assert where == "file:r18.pth" and model.fc.out_features == 5
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_weights_file_for_another_backbone_is_refused(tmp_path):
    other, _ = build_model("resnet34", 1000, pretrained=False)
    torch.save(other.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(DogbreedError, match="does not fit resnet18"):
        build_model("resnet18", 5, weights=str(tmp_path / "r34.pth"))


def test_weights_file_that_pickles_code_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(1), "hook": print}, tmp_path / "evil.pth")
    with pytest.raises(DogbreedError, match="is unreadable .it holds pickled objects, not just tensors"):
        build_model("resnet18", 5, weights=str(tmp_path / "evil.pth"))


def test_a_weights_file_that_is_text_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("these are my notes\n")
    with pytest.raises(DogbreedError, match="is unreadable .it is not a PyTorch weights file, or a damaged one.$"):
        build_model("resnet18", 5, weights=str(tmp_path / "notes.txt"))


def test_offline_pretrained_weights_is_one_clear_line(monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("https_proxy", closed)
    monkeypatch.setenv("HTTPS_PROXY", closed)
    with pytest.raises(DogbreedError) as err:
        build_model("resnet18", 5, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cannot download ResNet18_Weights.IMAGENET1K_V1 from https://download.pytorch.org/")
    assert "--weights PATH" in msg and "--no-pretrained" in msg
