"""Saying "unsure": the calibrated top-1 probability under which an answer says ``unsure``, chosen
on the validation split, and the selective-accuracy curve it is read from: for each threshold, the
share of images answered and how often those answers are right (Geifman & El-Yaniv, 2017).

A fixed threshold means different things for different models: 0.8 turned away 7% of a 95%-accurate
model's known-breed photos that it answered rightly. The threshold chosen is the lowest that keeps
the answers at a stated accuracy (``--unsure-accuracy``, 90% by default) on the validation images
the "not a dog" check lets through: a strong model answers nearly everything, a weak one says
``unsure`` where its answers would too often be wrong. The curve is ``stats.selective_curve``,
which ``evaluate`` draws too; no library offers this choice on it.
"""

from __future__ import annotations

import torch

from dogbreed.stats import selective_curve

DEFAULT_ACCURACY = 0.9
CURVE_POINTS = 50  # kept in model.json: enough to draw it and to re-read another accuracy from it


def thin(points: list[dict], most: int = CURVE_POINTS, keep: dict | None = None) -> list[dict]:
    """At most ``most`` of the curve's points, evenly spread over it, its last one and ``keep`` among them."""
    if len(points) <= most:
        return points
    picked = {round(i * (len(points) - 1) / (most - 1)) for i in range(most)}
    return [p for i, p in enumerate(points) if i in picked or p is keep]


def choose(confidence: torch.Tensor, correct: torch.Tensor, accuracy: float = DEFAULT_ACCURACY) -> dict:
    """The lowest threshold whose answers are right at least ``accuracy`` of the time on these
    images: 0 when all of them are, halfway between the last image answered and the first turned
    away otherwise; 1 when not even the most confident reach it (every answer is then unsure). With
    the coverage and accuracy it gives here and the curve it was read from (model.json's ``unsure``)."""
    points = selective_curve(confidence, correct)
    reaching = [i for i, p in enumerate(points) if p["accuracy"] >= accuracy]
    chosen = points[reaching[-1]] if reaching else None
    if chosen is None:
        threshold = 1.0
    elif chosen is points[-1]:
        threshold = 0.0
    else:
        threshold = (chosen["min_confidence"] + points[reaching[-1] + 1]["min_confidence"]) / 2
    return {"accuracy": accuracy, "threshold": round(threshold, 6), "chosen": True,
            "valid_answered": chosen["coverage"] if chosen else 0.0,
            "valid_answered_accuracy": chosen["accuracy"] if chosen else None,
            "curve": thin(points, keep=chosen)}


def answered(confidence: torch.Tensor, correct: torch.Tensor, threshold: float,
             dog: torch.Tensor | None = None) -> dict:
    """How known-breed images are answered at ``threshold`` (``dog``: whether the "not a dog"
    check lets each through): the share of each verdict, and how often the breed answers are right."""
    n = max(1, len(confidence))
    dog = torch.ones(len(confidence), dtype=torch.bool) if dog is None else dog
    breed = dog & (confidence >= threshold)
    right = int((breed & correct.bool()).sum())
    return {"breed": round(int(breed.sum()) / n, 6), "unsure": round(int((dog & ~breed).sum()) / n, 6),
            "not_a_dog": round(int((~dog).sum()) / n, 6),
            "breed_accuracy": round(right / int(breed.sum()), 6) if breed.any() else None}
