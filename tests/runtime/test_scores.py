"""The out-of-distribution scores, against their definitions."""

import pytest
import torch

from dogbreed.rejection import fit_gaussian, ledoit_wolf
from dogbreed.runtime import scores


def test_msp_and_energy_by_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    assert scores.msp(logits, 2.0).tolist() == pytest.approx(torch.softmax(logits / 2, dim=1).max(dim=1).values.tolist())
    assert scores.energy(logits, 2.0).tolist() == pytest.approx((2 * torch.logsumexp(logits / 2, dim=1)).tolist())


def test_mahalanobis_is_the_smallest_distance_to_a_class_mean():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(300, 6, generator=g), torch.randint(0, 3, (300,), generator=g)
    features += labels[:, None] * 3.0
    gaussian = fit_gaussian(features, labels, 3)
    x = torch.randn(5, 6, generator=g)
    diff = x.double()[:, None] - gaussian["means"].double()[None]
    brute = torch.einsum("ncd,de,nce->nc", diff, gaussian["precision"].double(), diff).min(dim=1).values
    assert scores.mahalanobis(x, gaussian["means"], gaussian["precision"]).tolist() == pytest.approx((-brute).tolist(),
                                                                                                      rel=1e-4)
    near = scores.score("mahalanobis", None, gaussian["means"][:1].clone(), tensors=gaussian)
    far = scores.score("mahalanobis", None, gaussian["means"][:1] + 50, tensors=gaussian)
    assert near.item() == pytest.approx(0, abs=1e-3) and far.item() < near.item()
    # prepared once (as an artifact is at load), the same distances; preparing twice is a no-op
    prepared = scores.prepare("mahalanobis", gaussian)
    assert scores.prepare("mahalanobis", prepared) is prepared and set(prepared) == {"precision", "projected", "offset"}
    assert scores.score("mahalanobis", None, x, tensors=prepared).tolist() == pytest.approx((-brute).tolist(), rel=1e-4)
    assert scores.prepare("imagenet", {"weight": torch.zeros(2, 3)})["weight"].shape == (2, 3)  # nothing to prepare


def test_the_shared_covariance_shrinks_as_far_as_the_data_is_too_few_to_tell():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.2])
    many = torch.randn(20_000, 5, generator=g) * scale
    many -= many.mean(dim=0)
    cov = ledoit_wolf(many.double())
    # plenty of images: the sample covariance, barely shrunk
    assert cov.diagonal().tolist() == pytest.approx((scale.double() ** 2).tolist(), rel=0.05)
    few = torch.randn(20, 200, generator=g).double()  # 20 images of a 200-d embedding: singular sample covariance
    shrunk = ledoit_wolf(few)
    assert torch.linalg.matrix_rank(few.T @ few) == 20 and torch.linalg.matrix_rank(shrunk) == 200
    off = shrunk - torch.diag(shrunk.diagonal())
    assert off.abs().max() < 0.5 * shrunk.diagonal().mean()  # mostly the identity part: white noise has no structure


def test_the_imagenet_score_is_the_dog_classes_share_of_the_imagenet_head():
    g = torch.Generator().manual_seed(0)
    weight, bias, features = torch.randn(1000, 8, generator=g), torch.zeros(1000), torch.randn(3, 8, generator=g)
    expected = torch.softmax(features @ weight.T, dim=1)[:, 151:269].sum(dim=1)
    got = scores.score("imagenet", torch.zeros(3, 2), features, tensors={"weight": weight, "bias": bias})
    assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    dog = torch.full((1000,), -20.0)
    dog[200] = 20.0  # a head that is sure of one dog class (Shetland sheepdog) answers ~1; of a cat class, ~0
    cat = torch.full((1000,), -20.0)
    cat[281] = 20.0
    eye = torch.eye(1000)[:8].T  # features pick biases through the identity: logits = bias
    for b, want in ((dog, 1.0), (cat, 0.0)):
        assert scores.imagenet(torch.zeros(1, 8), eye, b).item() == pytest.approx(want, abs=1e-6)


def test_a_score_that_needs_embeddings_says_so():
    with pytest.raises(ValueError, match="needs the penultimate embeddings"):
        scores.score("mahalanobis", torch.zeros(1, 3), None)
    with pytest.raises(ValueError, match="imagenet score needs the penultimate embeddings and its weight and bias"):
        scores.score("imagenet", torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown score 'odin'"):
        scores.score("odin", torch.zeros(1, 3), None)
