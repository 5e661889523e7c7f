"""Saying "not a dog": fitting what a score needs (class means and a shared covariance), the
threshold that keeps a stated share of in-distribution images, and how well a score separates
known breeds from anything else (AUROC, FPR at 95% TPR).

The scores themselves are defined once, in ``runtime/scores.py``, which the inference path runs.
"""

from __future__ import annotations

import torch

from dogbreed.runtime.scores import prepare, quantiles, score, threshold_at


def fit_gaussian(features: torch.Tensor, labels: torch.Tensor, classes: int) -> dict:
    """Class means and the precision of one covariance shared by the classes. The covariance is
    shrunk towards a multiple of the identity by Ledoit & Wolf's (2004) closed-form amount, so that a
    few hundred images can fit a 2048-d one: the sample covariance alone is singular there."""
    x = features.double()
    means = torch.stack([x[labels == c].mean(dim=0) if (labels == c).any() else x.mean(dim=0) for c in range(classes)])
    centred = x - means[labels]
    cov = ledoit_wolf(centred)
    return {"means": means.float(), "precision": torch.linalg.inv(cov).float()}


def ledoit_wolf(centred: torch.Tensor) -> torch.Tensor:
    """(1 - s) S + s mu I, with S the sample covariance of these centred rows, mu its mean variance
    and s the shrinkage that minimises the expected squared Frobenius error."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = sample.diagonal().mean()
    eye = torch.eye(d, dtype=sample.dtype)
    spread = ((sample - mu * eye) ** 2).sum() / d
    noise = ((centred.pow(2).sum(dim=1) ** 2).sum() / n - (sample**2).sum()) / (n * d)
    shrink = 1.0 if spread <= 0 else float(min(noise, spread) / spread)
    return (1 - shrink) * sample + shrink * mu.clamp_min(1e-12) * eye


def tensors_for(name: str, train: tuple, classes: int, imagenet_head: dict | None = None) -> dict | None:
    """What the named score reads beyond the network (``rejection.pth``): class means and shared
    precision from the train split's embeddings, or the ImageNet head's weight and bias."""
    if name == "mahalanobis":
        return fit_gaussian(train[1], train[2], classes)
    if name == "imagenet":
        if imagenet_head is None:
            raise ValueError("the imagenet score needs the backbone's ImageNet head")
        return {"weight": imagenet_head["weight"].float(), "bias": imagenet_head["bias"].float()}
    return None


def threshold_for(in_scores: torch.Tensor, keep: float = 0.95) -> float:
    """The score that ``keep`` of these in-distribution images reach (the validation split's)."""
    return threshold_at(quantiles(in_scores), keep)


def fit(name: str, keep: float, temperature: float, train: tuple, valid: tuple, test: tuple, classes: int,
        imagenet_head: dict | None = None) -> tuple[dict, dict | None, dict[str, torch.Tensor]]:
    """The rejection an artifact carries: model.json's part (score, keep, threshold, the validation
    scores' quantiles, the share of test images kept), for a score that reads the embedding its
    tensors (:func:`tensors_for`), and which valid and test images it lets through. Each split is
    (logits, embeddings, targets)."""
    tensors = tensors_for(name, train, classes, imagenet_head)
    prepared = prepare(name, tensors)
    valid_scores = score(name, valid[0], valid[1], temperature, prepared)
    test_scores = score(name, test[0], test[1], temperature, prepared)
    q = quantiles(valid_scores)
    threshold = threshold_at(q, keep)
    doc = {"score": name, "keep": keep, "threshold": round(threshold, 6), "quantiles": [round(v, 6) for v in q],
           "test_kept": round(float((test_scores >= threshold).double().mean()), 6)}
    return doc, tensors, {"valid": valid_scores >= threshold, "test": test_scores >= threshold}


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """The chance that a random in-distribution image scores above a random other one (ties half)."""
    scores = torch.cat([in_scores, out_scores]).double()
    ranks = _average_ranks(scores)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The share of other images let through when the threshold keeps ``tpr`` of in-distribution ones."""
    return float((out_scores.double() >= threshold_for(in_scores, tpr)).double().mean())


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks; tied values share their mean rank."""
    ordered, order = values.sort()
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(values.dtype)
    ranks = torch.empty_like(values)
    ranks[order] = ((ends - counts + 1 + ends) / 2)[group]
    return ranks


def describe(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict:
    return {"auroc": round(auroc(in_scores, out_scores), 6), "fpr_at_95_tpr": round(fpr_at_tpr(in_scores, out_scores), 6),
            "in_n": len(in_scores), "out_n": len(out_scores)}

