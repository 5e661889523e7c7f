"""Model quality from ground truth, in SageMaker Model Monitor's ``multiclass_classification_metrics``
shape: each metric ``{"value", "standard_deviation"}``, the deviation only from 200 records up (the
metric over five random 80% resamples, as SageMaker computes it), and the confusion matrix as
``{true: {predicted: count}}``; plus each breed's recall.

Written by hand: the handful of weighted averages SageMaker reports are a few lines each, and
scikit-learn would be a large dependency for them.
"""

from __future__ import annotations

import numpy as np

MIN_FOR_DEVIATION = 200
RESAMPLES = 5


def _metrics(truth: np.ndarray, predicted: np.ndarray, classes: int) -> dict[str, float]:
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    support = confusion.sum(axis=1)
    hits = np.diag(confusion).astype(np.float64)
    recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    called = confusion.sum(axis=0)
    precision = np.divide(hits, called, out=np.zeros(classes), where=called > 0)
    weights = support / max(support.sum(), 1)
    out = {"accuracy": float(hits.sum() / max(len(truth), 1)), "weighted_recall": float(weights @ recall),
           "weighted_precision": float(weights @ precision)}
    for name, beta in (("weighted_f0_5", 0.5), ("weighted_f1", 1.0), ("weighted_f2", 2.0)):
        denominator = beta ** 2 * precision + recall
        f = np.divide((1 + beta ** 2) * precision * recall, denominator, out=np.zeros(classes), where=denominator > 0)
        out[name] = float(weights @ f)
    # the best constant classifier always answers the most common true class
    common = int(np.argmax(support))
    out["accuracy_best_constant_classifier"] = float(support[common] / max(len(truth), 1))
    return out


def multiclass(truth: list[int], predicted: list[int], labels: list[str], seed: int = 0) -> dict:
    """The metrics of ``predicted`` against ``truth`` (class indices into ``labels``)."""
    t, p = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    classes = len(labels)
    values = _metrics(t, p, classes)
    deviations: dict[str, float] = {}
    if len(t) >= MIN_FOR_DEVIATION:
        rng = np.random.default_rng(seed)
        runs = [_metrics(t[idx], p[idx], classes)
                for idx in (rng.choice(len(t), int(0.8 * len(t)), replace=False) for _ in range(RESAMPLES))]
        deviations = {k: float(np.std([r[k] for r in runs])) for k in values}
    doc = {k: {"value": round(v, 6), **({"standard_deviation": round(deviations[k], 6)} if deviations else {})}
           for k, v in values.items()}
    confusion: dict[str, dict[str, int]] = {}
    for a, b in zip(t, p):
        row = confusion.setdefault(labels[a], {})
        row[labels[b]] = row.get(labels[b], 0) + 1
    doc["confusion_matrix"] = confusion
    support = np.bincount(t, minlength=classes)
    right = np.bincount(t[t == p], minlength=classes)
    doc["recall_per_class"] = {labels[i]: round(float(right[i] / support[i]), 6) for i in range(classes) if support[i]}
    return doc


def label_index(value: str, labels: list[str], display: list[str]) -> int | None:
    """A ground-truth label as a class index: the folder name ("001.Affenpinscher"), the display
    name ("Affenpinscher"), or the index itself; None for one the model does not know."""
    value = value.strip()
    if value in labels:
        return labels.index(value)
    if value in display:
        return display.index(value)
    if value.isdigit() and int(value) < len(labels):
        return int(value)
    return None
