"""Why the model errs, on the test split (after fastai's interpretation tools): the breed pairs it
confuses most, the images it got most wrong (a gallery with true and predicted breed), and the
accuracy of each breed, sorted.

    runs/<run>/interpretation.json   confused pairs, top losses (file, true, predicted, probability)
              top_losses.png         the gallery
              per_class.png          accuracy per breed, worst first
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dogbreed.files import atomic_path
from dogbreed.runtime.presets import ImageDecodeError, load_image

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


def plot_top_losses(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    grid = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(grid, cols, figsize=(3.2 * cols, 3.4 * grid), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        try:
            img = load_image(row["file"])
            img.thumbnail((256, 256))
            ax.imshow(img)
        except (ImageDecodeError, OSError):
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(f"true: {row['true']}\npredicted: {row['predicted']} ({row['probability']:.2f})", fontsize=8)
    fig.suptitle("Top losses on the test split", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_per_class(rows: list[dict], path: Path, show: int = 40) -> None:
    """Accuracy per breed, worst first (the ``show`` worst where there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted((r for r in rows if r["accuracy"] is not None), key=lambda r: (r["accuracy"], r["display"]))[:show]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(ranked) + 1.2))
    ax.barh([r["display"] for r in ranked][::-1], [r["accuracy"] for r in ranked][::-1], color="#4c78a8")
    ax.set(xlim=(0, 1), xlabel="test accuracy",
           title=f"Accuracy per breed, worst first ({len(ranked)} of {len(rows)})")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
