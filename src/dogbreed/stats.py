"""What a labelled split's answers say beyond their mean: how uncertain an accuracy is, and how
accurate the answers are when only the most confident are given (the selective curve).

Both read only counts and confidences, never a model, so ``train``'s outputs, ``evaluate`` and the
choice of an "unsure" threshold can share them.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's (1927) score interval for a proportion, such as an accuracy.

    A percentile bootstrap of a perfect score resamples only successes and reports 100-100%, as if
    60 test images proved the model never errs; Wilson's interval stays honest at 0 and 100% (60 of
    60 gives 94.0-100%) and, unlike the normal approximation, never leaves [0, 1]. The closed form:
    scipy and statsmodels, which have it, are not dependencies of dogbreed.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def selective_curve(confidence: torch.Tensor, correct: torch.Tensor, digits: int = 6) -> list[dict]:
    """The accuracy of the images answered at each threshold on the top probability, from the
    strictest threshold that answers any image down to the one that answers all.

    One point per distinct threshold, so never more points than images and no two alike: images
    with the same confidence are answered or refused together, so no threshold can split them.
    Confidences are floored to ``digits`` decimals before grouping, so that each point's
    ``min_confidence`` is a threshold a request can pass as written and answers exactly that
    point's images (a rounded-up threshold would answer fewer).
    """
    n = confidence.numel()
    if n == 0:
        return []
    scale = 10**digits
    floored = torch.floor(confidence.double() * scale) / scale
    order = floored.argsort(descending=True, stable=True)
    thresholds, counts = torch.unique_consecutive(floored[order], return_counts=True)
    answered = counts.cumsum(0)
    right = correct.double()[order].cumsum(0)[answered - 1]
    return [{"coverage": round(int(k) / n, 4), "accuracy": round(float(r) / int(k), 6), "min_confidence": round(float(t), digits)}
            for t, k, r in zip(thresholds, answered, right)]
