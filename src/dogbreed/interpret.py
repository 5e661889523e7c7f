"""Why the model errs, on the test split (after fastai's interpretation tools): the breed pairs it
confuses most, the images it got most wrong (a gallery with true and predicted breed), and the
accuracy of each breed, sorted.

    runs/<run>/interpretation.json   confused pairs, top losses (file, true, predicted, probability)
              top_losses.png         the gallery (drawn by ``plots.plot_top_losses``)
              per_class.png          accuracy per breed, worst first (``plots.plot_per_class``)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_PAIRS = 10
TOP_LOSSES = 16


def confused_pairs(targets: torch.Tensor, predictions: torch.Tensor, display: list[str], top: int = TOP_PAIRS) -> list[dict]:
    """(true breed, predicted breed, how many test images) for the most frequent mistakes."""
    counts: dict[tuple[int, int], int] = {}
    for t, p in zip(targets.tolist(), predictions.tolist()):
        if t != p:
            counts[(t, p)] = counts.get((t, p), 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"true": display[t], "predicted": display[p], "count": n} for (t, p), n in ranked]


def top_losses(logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, paths: list[str], display: list[str],
               temperature: float = 1.0, top: int = TOP_LOSSES) -> list[dict]:
    """The test images with the highest loss: file, true and predicted breed, the probability given
    to the predicted breed and to the true one (calibrated)."""
    losses = F.cross_entropy(logits.double() / temperature, targets, reduction="none")
    probs = torch.softmax(logits.double() / temperature, dim=1)
    rows = []
    for i in losses.argsort(descending=True)[:top].tolist():
        predicted = int(probs[i].argmax())
        rows.append({"file": paths[int(indices[i])], "true": display[int(targets[i])], "predicted": display[predicted],
                     "probability": round(float(probs[i, predicted]), 4),
                     "probability_of_true": round(float(probs[i, targets[i]]), 4), "loss": round(float(losses[i]), 4)})
    return rows
