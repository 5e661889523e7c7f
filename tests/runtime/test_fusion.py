"""The frozen network fused for the CPU: the same function, every convolution one oneDNN call."""

import pytest
import torch
import torchvision
from torch import nn

from dogbreed import machine
from dogbreed.runtime import fusion

pytestmark = pytest.mark.skipif(not fusion.available(), reason="this torch has no oneDNN pointwise convolution")


def trained_looking(name: str) -> nn.Module:
    """A torchvision network with random weights and BatchNorm statistics other than the initial
    ones (folding the initial ones changes almost nothing, so would prove little)."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, num_classes=7).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net


def relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("name, activations", [("resnet18", nn.ReLU), ("efficientnet_v2_s", nn.SiLU)])
def test_every_convolution_is_fused_with_what_follows_and_computes_what_the_network_does(name, activations):
    net = trained_looking(name)
    fused = fusion.pointwise(fusion.fold_batchnorms(net), torch.float32)
    kinds = [m for m in fused.modules() if isinstance(m, fusion.PointwiseConv)]
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in fused.modules())
    assert any(m.unary for m in kinds)
    if name == "resnet18":  # each block ends conv -> add -> relu: 8 blocks, each its sum fused
        assert sum(m.add for m in kinds) == 8
        assert not any(isinstance(m, activations) for m in fused.modules())  # every ReLU went into a convolution
    images = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = net(images), fused(images)
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-5


def test_bf16_fused_is_as_close_to_fp32_as_autocast_is():
    net = trained_looking("resnet18")
    images = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    fast = fusion.ForCpu(net, torch.bfloat16)
    with torch.inference_mode():
        expected = net(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast, got = net(images), fast(images)
    assert got.dtype == torch.bfloat16
    assert relative(got, expected) < max(3 * relative(autocast, expected), 1e-3)
    if fast.proven:  # the folded copy was let go after the first fused pass
        assert fast.plain is None
    else:  # oneDNN's bf16 convolution needs avx_ne_convert or AVX-512 (BW, VL, DQ): without, the folded network answers
        assert fast.fused is None and fast.plain is not None
        flags = machine.cpu_flags()
        assert "avx_ne_convert" not in flags and not {"avx512bw", "avx512vl", "avx512dq"} <= flags


def test_a_network_whose_fused_pass_fails_runs_folded_for_good(monkeypatch):
    net = trained_looking("resnet18")
    fast = fusion.ForCpu(net)

    def refused(*args, **kwargs):
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(fast.fused, "forward", refused)
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, got = net(images), fast(images)
    assert fast.fused is None
    assert relative(got, expected) < 1e-5


def test_folding_and_fusing_leave_the_model_as_it_was():
    net = trained_looking("resnet18").train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fusion.fold_batchnorms(net)
    fusion.pointwise(folded, torch.bfloat16)
    assert net.training and any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.Conv2d) for m in folded.modules())  # fusing built its own modules
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_serving_runs_the_artifact_fused_with_the_answers_it_has_as_trained(trained_run):
    """What ``serve``, the handlers and the run-end check load (``fused=True``) answers as the
    network loaded as trained does, in fp32 to float precision; exports read the latter."""
    from dogbreed.artifact import extracted
    from dogbreed.runtime import backends, pipeline
    from dogbreed.runtime.loading import load_model_dir

    torch.manual_seed(0)
    pixels = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8) for _ in range(4)]
    with extracted(trained_run.artifact) as model_dir:
        trained = load_model_dir(str(model_dir), "cpu", "eager")
        fused = load_model_dir(str(model_dir), "cpu", "eager", fused=True)
        served, _ = backends.select(str(model_dir), "eager", "cpu")
        with torch.inference_mode():
            (expected, features), (got, got_features) = pipeline.forward(trained, pixels), pipeline.forward(fused, pixels)
    assert not isinstance(trained.model.body, fusion.ForCpu)
    assert isinstance(fused.model.body, fusion.ForCpu) and isinstance(served.model.body, fusion.ForCpu)
    assert fused.model.body.proven  # it ran fused, not the folded fallback
    assert relative(got, expected) < 1e-5 and relative(got_features, features) < 1e-5


class ShiftedConv(nn.Module):
    """A convolution followed by a sum with a constant, not a residual: left to the network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + 1.0)


def test_a_sum_with_a_constant_is_not_taken_for_a_residual():
    torch.manual_seed(0)
    net = ShiftedConv().eval()
    fused = fusion.pointwise(fusion.fold_batchnorms(net), torch.float32)
    [conv] = [m for m in fused.modules() if isinstance(m, fusion.PointwiseConv)]
    assert not conv.add and conv.unary is None
    images = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        assert relative(fused(images), net(images)) < 1e-6
