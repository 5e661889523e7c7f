"""Every picture a run, an evaluation, a study or a report writes, and the one way each is saved
(:func:`save`): learning curves, the confusion matrix, the reliability diagram, the top losses and
per-breed accuracy, the selective-prediction curve and the score histograms. The numbers they
draw come from the modules that compute them (``calibration``, ``evaluate``, ``interpret``)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display, and safe in worker processes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dogbreed import calibration  # noqa: E402
from dogbreed.files import atomic_path  # noqa: E402
from dogbreed.runtime.presets import ImageDecodeError, load_image  # noqa: E402


def save(fig, path: str | os.PathLike, *, dpi: int = 100, bbox_inches: str | None = None) -> None:
    """Write ``fig`` as a PNG in one step (a reader never sees half a file) and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
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
    save(fig, path, dpi=110, bbox_inches="tight")


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
    save(fig, path, dpi=110, bbox_inches="tight")


def plot_reliability(test_logits: torch.Tensor, test_targets: torch.Tensor, temperature: float,
                     path: str | os.PathLike) -> None:
    """Accuracy against confidence per bin, before and after the temperature, with each bin's
    share of images: the diagonal is perfect calibration."""
    bins = calibration.ECE_BINS
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (title, t) in zip(axes, (("before (T = 1)", 1.0), (f"after (T = {temperature:.3g})", temperature))):
        accuracy, share, ece = calibration.reliability(test_logits, test_targets, t, bins)
        ax.bar(edges[:-1], accuracy, width=1 / bins, align="edge", color="#4c78a8", edgecolor="white", label="accuracy")
        ax.bar(edges[:-1], share, width=1 / bins, align="edge", color="#f58518", alpha=0.45, label="share of images")
        ax.plot([0, 1], [0, 1], color="#333", ls="--", lw=1, label="perfect calibration")
        ax.set(title=f"{title}: ECE {100 * ece:.1f}%", xlabel="confidence (top probability)", xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("accuracy / share")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_top_losses(rows: list[dict], path: str | os.PathLike, overlays: Sequence[np.ndarray | None] = (),
                    split: str = "test") -> None:
    """The gallery of ``interpret.top_losses``: each image with its true and predicted breed, as
    the heatmap of the predicted breed over the model's view where ``overlays`` has one (else the
    whole photo)."""
    title = f"Top losses on the {split} split" + (": where the model saw the predicted breed" if any(
        o is not None for o in overlays) else "")
    _gallery([f"true: {r['true']}\npredicted: {r['predicted']} ({r['probability']:.2f})" for r in rows],
             [r["file"] for r in rows], overlays, title, path)


def plot_confused_pairs(rows: list[dict], path: str | os.PathLike, overlays: Sequence[np.ndarray | None] = ()) -> None:
    """The most confused pairs (``interpret.confused_pairs`` with examples), one image of each:
    the heatmap of the breed it was taken for, where ``overlays`` has one."""
    _gallery([f"{r['true']}\ntaken for {r['predicted']} ({r['count']}x)" for r in rows], [r.get("example") for r in rows],
             overlays, "Most confused pairs: where the model saw the wrong breed", path)


def _gallery(captions: list[str], files: list[str | None], pictures: Sequence[np.ndarray | None], title: str,
             path: str | os.PathLike, cols: int = 4, cell: int = 256) -> None:
    """Captioned images in a grid: each picture given, else a thumbnail of its file.

    One mosaic in one axes, its captions placed as text: drawn as a grid of 16 axes laid out by
    ``tight_layout`` it took twice as long (0.9 s against 0.4 s), the most of any plot a run draws."""
    cols = max(1, min(cols, len(captions)))
    grid = max(1, math.ceil(len(captions) / cols))
    band = 40  # caption space above each image, in mosaic pixels
    mosaic = np.full((grid * (cell + band), cols * cell, 3), 255, dtype=np.uint8)
    fig = plt.figure(figsize=(3.2 * cols, 3.4 * grid + 0.4))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / (3.4 * grid + 0.4)))
    for i, (caption, file) in enumerate(zip(captions, files)):
        top, left = (i // cols) * (cell + band), (i % cols) * cell
        picture = pictures[i] if i < len(pictures) else None
        try:
            if picture is not None:  # the model's view, as large as the cell allows
                img = Image.fromarray(picture)
                scale = (cell - 8) / max(img.size)
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
            elif file is not None:
                img = load_image(file)
                img.thumbnail((cell - 8, cell - 8))
            else:
                raise OSError("no image")
            y, x = top + band + (cell - img.height) // 2, left + (cell - img.width) // 2
            mosaic[y:y + img.height, x:x + img.width] = np.asarray(img.convert("RGB"))
        except (ImageDecodeError, OSError):
            ax.text(left + cell / 2, top + band + cell / 2, "unreadable", ha="center", va="center", fontsize=8)
        ax.text(left + cell / 2, top + band - 4, caption, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, interpolation="antialiased")
    if not captions:
        ax.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "none", ha="center", va="center", fontsize=10)
    ax.axis("off")
    fig.suptitle(title, fontsize=11, y=0.995, va="top")
    save(fig, path, dpi=90)


def plot_explained_maps(pixels: torch.Tensor, maps: dict[str, np.ndarray], answer: dict, verdict: str,
                        path: str | os.PathLike, breed: str | None = None) -> None:
    """One explained prediction: the model's view of the photo, each heatmap over it (titled by its
    key and the breed it explains: ``breed``, else the top one), the top-k breeds as bars, and the
    verdict in words underneath."""
    from dogbreed.runtime import explain as heatmaps

    panels = 2 + len(maps)
    fig = plt.figure(figsize=(3.7 * panels, 4))
    grid = fig.add_gridspec(1, panels, width_ratios=(1,) * (panels - 1) + (1.3,))
    photo = fig.add_subplot(grid[0, 0])
    photo.imshow(pixels.permute(1, 2, 0).numpy())
    photo.set_title("what the model saw")
    photo.axis("off")
    for i, (title, heat) in enumerate(maps.items(), 1):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(heatmaps.overlay(pixels, heat))
        ax.set_title(f"{title} for {breed or answer['breeds'][0]}", fontsize=10)
        ax.axis("off")
    bars = fig.add_subplot(grid[0, panels - 1])
    breeds, probs = answer["breeds"][::-1], answer["topk_probs"][::-1]
    bars.barh(range(len(breeds)), probs, color=["#999999"] * (len(breeds) - 1) + ["#d4480e"])
    bars.set_yticks(range(len(breeds)), breeds)
    bars.set(xlim=(0, 1), xlabel="probability", title=f"top {len(breeds)}")
    for y, p in enumerate(probs):
        bars.text(min(p + 0.02, 0.85), y, f"{p:.3f}", va="center")
    fig.text(0.5, 0.02, verdict, ha="center", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save(fig, path)


def plot_per_class(rows: list[dict], path: str | os.PathLike, show: int = 40) -> None:
    """Accuracy per breed, worst first (the ``show`` worst where there are more)."""
    ranked = sorted((r for r in rows if r["accuracy"] is not None), key=lambda r: (r["accuracy"], r["display"]))[:show]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(ranked) + 1.2))
    ax.barh([r["display"] for r in ranked][::-1], [r["accuracy"] for r in ranked][::-1], color="#4c78a8")
    ax.set(xlim=(0, 1), xlabel="test accuracy",
           title=f"Accuracy per breed, worst first ({len(ranked)} of {len(rows)})")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    save(fig, path, dpi=90)


def plot_selective(curve: list[dict], threshold: float, answered: float, path: str | os.PathLike) -> None:
    """Accuracy against the share of images answered, most confident first, marking the share that
    ``threshold`` answers."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], marker="o", ms=3, color="#4c78a8")
    ax.axvline(answered, color="#e45756", ls="--", lw=1, label=f"answered at threshold {threshold:g}")
    ax.set(xlabel="share of images answered (most confident first)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02),
           title="Selective prediction")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_scores(in_scores: torch.Tensor, out_scores: torch.Tensor, name: str, path: str | os.PathLike) -> None:
    """Histograms of the "not a dog" score of known-breed images and of the others."""
    both = torch.cat([in_scores, out_scores]).double().numpy()
    bins = np.linspace(both.min(), both.max(), 40) if both.max() > both.min() else 10
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.hist(in_scores.double().numpy(), bins=bins, alpha=0.6, label="known breeds", color="#4c78a8", density=True)
    ax.hist(out_scores.double().numpy(), bins=bins, alpha=0.6, label="--ood images", color="#e45756", density=True)
    ax.set(xlabel=f"{name} score (higher: more like the known breeds)", ylabel="density", title="Known breeds against others")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
