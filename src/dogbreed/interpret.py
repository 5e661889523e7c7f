"""Why the model errs, on the test split (after fastai's interpretation tools): the breed pairs it
confuses most, the images it got most wrong (a gallery with true and predicted breed), and the
accuracy of each breed, sorted.

    runs/<run>/interpretation.json   confused pairs (with an example file each), top losses (file,
                                     true, predicted, probability), the heatmaps' focus
              top_losses.png         the gallery, with heatmaps (drawn by ``plots.plot_top_losses``)
              confused_pairs.png     one image of each confused pair, with its heatmap
              per_class.png          accuracy per breed, worst first (``plots.plot_per_class``)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_PAIRS = 10
TOP_LOSSES = 16


def confused_pairs(targets: torch.Tensor, predictions: torch.Tensor, display: list[str], top: int = TOP_PAIRS,
                   losses: torch.Tensor | None = None, files: list[str] | None = None) -> list[dict]:
    """(true breed, predicted breed, how many test images) for the most frequent mistakes; with
    each image's ``losses`` and ``files``, also the pair's ``example``: its image of highest loss."""
    counts: dict[tuple[int, int], int] = {}
    worst: dict[tuple[int, int], int] = {}
    for i, (t, p) in enumerate(zip(targets.tolist(), predictions.tolist())):
        if t != p:
            counts[(t, p)] = counts.get((t, p), 0) + 1
            if losses is not None and ((t, p) not in worst or losses[i] > losses[worst[(t, p)]]):
                worst[(t, p)] = i
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    rows = [{"true": display[t], "predicted": display[p], "count": n} for (t, p), n in ranked]
    if losses is not None and files is not None:
        for row, (pair, _) in zip(rows, ranked):
            row["example"] = files[worst[pair]]
    return rows


def losses_of(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.cross_entropy(logits.double() / temperature, targets, reduction="none")


def top_losses(logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, paths: list[str], display: list[str],
               temperature: float = 1.0, top: int = TOP_LOSSES) -> list[dict]:
    """The test images with the highest loss: file, true and predicted breed, the probability given
    to the predicted breed and to the true one (calibrated)."""
    losses = losses_of(logits, targets, temperature)
    probs = torch.softmax(logits.double() / temperature, dim=1)
    rows = []
    for i in losses.argsort(descending=True)[:top].tolist():
        predicted = int(probs[i].argmax())
        rows.append({"file": paths[int(indices[i])], "true": display[int(targets[i])], "predicted": display[predicted],
                     "probability": round(float(probs[i, predicted]), 4),
                     "probability_of_true": round(float(probs[i, targets[i]]), 4), "loss": round(float(losses[i]), 4)})
    return rows
