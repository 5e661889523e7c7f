"""How much an image looks like the breeds a model was trained on: the out-of-distribution scores,
higher meaning more like the training data, from what one forward pass computes.

- ``msp``: the top calibrated softmax probability (Hendrycks & Gimpel, 2017);
- ``energy``: T * logsumexp(logits / T), the negative free energy (Liu et al., 2020);
- ``mahalanobis``: minus the smallest squared Mahalanobis distance of the penultimate embedding
  to a class mean, with one covariance shared by the classes (Lee et al., 2018);
- ``imagenet``: the share of the ImageNet head's probability on its 118 dog classes (indices
  151-268), the dog detector of Udacity's dog project, for a backbone kept at its ImageNet weights.

Shipped verbatim inside every artifact (``code/scores.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import torch

SCORES = ("msp", "energy", "mahalanobis", "imagenet")
# what ``rejection.pth`` holds for a score that reads the embedding
TENSORS = {"mahalanobis": ("means", "precision"), "imagenet": ("weight", "bias")}
NEEDS_FEATURES = set(TENSORS)
IMAGENET_DOGS = slice(151, 269)  # ImageNet-1k's dog classes, Chihuahua (151) to Mexican hairless (268)


def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits.double() / temperature, dim=1).max(dim=1).values


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return temperature * torch.logsumexp(logits.double() / temperature, dim=1)


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Minus the smallest (f - m)^T P (f - m) over the class means m."""
    return _nearest_mean(features, prepare("mahalanobis", {"means": means, "precision": precision}))


def _nearest_mean(features: torch.Tensor, prepared: dict) -> torch.Tensor:
    # (f - m)^T P (f - m) = f^T P f - 2 f^T (P m) + m^T P m: one D x D and one C x D product per image
    f = features.float()
    dist = ((f @ prepared["precision"]) * f).sum(dim=1, keepdim=True) - 2 * f @ prepared["projected"].T
    return -(dist + prepared["offset"][None]).min(dim=1).values.double()


def prepare(name: str, tensors: dict | None) -> dict | None:
    """What the score reads for every batch, computed once from what ``rejection.pth`` stores: for
    ``mahalanobis`` the means projected by the precision (P m, C x D) and m^T P m, so a batch costs
    D^2 + C D per image rather than C D^2."""
    if tensors is None or name != "mahalanobis" or "projected" in tensors:
        return tensors
    means, precision = tensors["means"].float(), tensors["precision"].float()
    projected = means @ precision  # P is symmetric
    return {"precision": precision, "projected": projected, "offset": (projected * means).sum(dim=1)}


def imagenet(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The ImageNet head's probability mass on its dog classes."""
    probs = torch.softmax(torch.nn.functional.linear(features.float(), weight.float(), bias.float()).double(), dim=1)
    return probs[:, IMAGENET_DOGS].sum(dim=1)


def score(name: str, logits: torch.Tensor, features: torch.Tensor | None, temperature: float = 1.0,
          tensors: dict | None = None) -> torch.Tensor:
    """The named score of a batch: (N,) float64. ``tensors``: what :data:`TENSORS` names for it,
    best :func:`prepare`-d once for all the batches."""
    if name == "msp":
        return msp(logits, temperature)
    if name == "energy":
        return energy(logits, temperature)
    if name in TENSORS:
        if features is None or tensors is None:
            raise ValueError(f"the {name} score needs the penultimate embeddings and its {' and '.join(TENSORS[name])}")
        if name == "mahalanobis":
            return _nearest_mean(features, prepare(name, tensors))
        return imagenet(features, tensors["weight"], tensors["bias"])
    raise ValueError(f"unknown score {name!r}; valid: {', '.join(SCORES)}")


QUANTILES = 101  # validation scores kept at 0%, 1%, ..., 100%: any share can be asked for later


def quantiles(valid_scores: torch.Tensor) -> list[float]:
    return [float(v) for v in torch.quantile(valid_scores.double(), torch.linspace(0, 1, QUANTILES, dtype=torch.float64))]


def threshold_at(quantiles: list[float], keep: float) -> float:
    """The score that ``keep`` of the validation images reached, from their quantiles (ascending)."""
    at = (1 - keep) * (len(quantiles) - 1)
    low = min(int(at), len(quantiles) - 2)
    return quantiles[low] + (at - low) * (quantiles[low + 1] - quantiles[low])
