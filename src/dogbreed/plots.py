"""The run's pictures: learning curves and the test confusion matrix."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dogbreed.files import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(history: list[dict], path: str | os.PathLike, best_epoch: int | None = None) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="valid")
    ax_loss.set(title="loss (mean per sample)", xlabel="epoch", yscale="log")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train top-1")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], "o-", label="valid top-1")
    ax_acc.plot(epochs, [r["val_top5"] for r in history], "o--", label="valid top-5")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(targets, predictions, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets), np.asarray(predictions)), 1)
    return matrix


def plot_confusion(matrix: np.ndarray, names: list[str], path: str | os.PathLike, title: str = "test confusion matrix") -> None:
    n = len(names)
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    size = min(24, 4 + 0.18 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set(title=f"{title} (row-normalized)", xlabel="predicted", ylabel="true")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if matrix[i, j] / rows[i, 0] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
