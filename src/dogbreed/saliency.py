"""Where a model looked, in the outputs people read: the heatmaps of a run's top losses and of its
most confused pairs, and ``saliency_focus``, the share of the maps' mass where the subject is.

The subject's place is known on a synthetic data set (``data synth`` writes each object's box in
``boxes.json``); elsewhere the centre quarter of the view stands in for it (where photographers
put a dog). Either way the figure is read against what a map spread evenly would put there (the
box's area, or 0.25): its ``lift``. A lift near 1 means the maps are no more on the subject than
on anything else, which is what a model that learned backgrounds shows, and the run says so.

A run judges its test split from cached embeddings, which carry no maps, so the heatmaps come
from one more pass at the run's end (:func:`network`: the artifact's own, fused, under bf16 where
the CPU has it natively) over the top losses, one example of each confused pair and an evenly
spread sample of :data:`SAMPLE` test images. ``evaluate`` measures the same figure over a whole
split, where the network has class activation maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from dogbreed.data.synth import read_boxes
from dogbreed.gates import spread
from dogbreed.runtime import explain as heatmaps
from dogbreed.runtime import pipeline
from dogbreed.runtime.backends import native_bf16
from dogbreed.runtime.loading import LoadedModel, load_model_dir
from dogbreed.runtime.pipeline import RequestError

SAMPLE = 64  # test images a run's focus is measured on (the top losses and pair examples come on top)
BATCH = 16
LOW_LIFT = 1.1  # under this, the maps sit on the subject hardly more than anywhere else: the run warns


@dataclass
class Looked:
    """One image's heatmap: its view (uint8, 3 x H x W), the top breed's map in [0, 1], and the
    map's share inside the subject's region and that region's area."""

    pixels: torch.Tensor
    heat: np.ndarray
    share: float
    area: float


@dataclass
class Regions:
    """Where the subject of each image is, as fractions of the model's view: the synthetic data
    set's boxes where ``root`` has them, else the centre of every view."""

    root: Path | None = None
    boxes: dict[str, list[float]] | None = field(default=None)

    @classmethod
    def of(cls, root: str | Path | None) -> "Regions":
        boxes = read_boxes(root) if root is not None and Path(root).is_dir() else None
        return cls(Path(root) if root is not None else None, boxes)

    @property
    def name(self) -> str:
        return "box" if self.boxes is not None else "centre"

    def box(self, model: LoadedModel, path: str) -> tuple[float, float, float, float]:
        if self.boxes is None or self.root is None:
            return heatmaps.CENTRE
        try:
            box = self.boxes[Path(path).resolve().relative_to(self.root.resolve()).as_posix()]
        except (KeyError, ValueError):
            return heatmaps.CENTRE
        with Image.open(path) as img:  # the header alone: the box is mapped through the view's geometry
            return model.preset.view_box(box, *img.size)


def area(box: Sequence[float]) -> float:
    left, top, right, bottom = box
    return max(right - left, 0.0) * max(bottom - top, 0.0)


def look(model: LoadedModel, paths: Sequence[str], regions: Regions) -> tuple[dict[str, Looked], str | None]:
    """Each readable image of ``paths``'s heatmap for its top breed, in batches through the
    model's one inference path, and the method that made them (``pipeline.explained_maps``: CAM,
    or Grad-CAM for a backbone without exact maps); ({}, None) where there are none. Unreadable
    images are left out (the run's own evaluation has already said so)."""
    looked, method = {}, None
    for start in range(0, len(paths), BATCH):
        chunk, pixels = [], []
        for path in paths[start:start + BATCH]:
            try:
                pixels.append(pipeline.decode(model, Path(path).read_bytes(), name=path))
                chunk.append(path)
            except (RequestError, OSError):
                continue
        if not pixels:
            continue
        logits, _, maps = pipeline.forward_maps(model, pixels)
        raws, method = pipeline.explained_maps(model, pixels, maps, dict(enumerate(logits.argmax(1).tolist())))
        if method is None:
            return {}, None
        for i, path in enumerate(chunk):
            heat = heatmaps.normalized(raws[i])
            box = regions.box(model, path)
            looked[path] = Looked(pixels[i], heat, heatmaps.box_share(heat, box), area(box))
    return looked, method


def focus(looked: Sequence[tuple[float, float]], region: str, method: str = heatmaps.CAM) -> dict | None:
    """``saliency_focus`` from each image's (share of its map in the subject's region, the
    region's area): the shares' mean and median, what maps spread evenly would put there, their
    ratio (``lift``) and whether it is low. None for no maps."""
    if not looked:
        return None
    shares = torch.tensor([share for share, _ in looked])
    evenly = float(np.mean([area for _, area in looked]))
    lift = shares.mean().item() / evenly if evenly > 0 else None
    return {"mean": round(shares.mean().item(), 4), "median": round(shares.median().item(), 4), "region": region,
            "spread_evenly": round(evenly, 4), "lift": None if lift is None else round(lift, 3),
            "low": lift is not None and lift < LOW_LIFT, "method": method, "images": len(looked)}


def summary(figure: dict) -> str:
    """One line saying what ``focus`` found, and what to do where it is low."""
    where = "the objects' boxes" if figure["region"] == "box" else "the centre quarter of the view"
    line = (f"heatmaps put {100 * figure['mean']:.0f}% of their mass in {where} ({100 * figure['spread_evenly']:.0f}% "
            f"if spread evenly; lift {figure['lift']:.2f}, {figure['images']} images)")
    if figure["low"]:
        line += (": the model may have learned backgrounds, not dogs; look at top_losses.png and "
                 "confused_pairs.png, and vary the backgrounds in the training data")
    return line


def overlays(looked: dict[str, Looked], paths: Sequence[str | None]) -> list[np.ndarray | None]:
    """The heatmap over the view for each of ``paths`` that was looked at (None for the rest)."""
    return [np.asarray(heatmaps.overlay(looked[p].pixels, looked[p].heat)) if p in looked else None for p in paths]


def network(model_dir: str | Path, served: LoadedModel) -> LoadedModel:
    """The network a run's end draws its heatmaps with: ``served`` (the artifact's, fp32, fused),
    or the same under bf16 where this CPU runs it natively: 4x faster on a CPU with AMX, and its
    maps agree with fp32's (correlation at least 0.95, ``tests/runtime/test_explain.py``)."""
    if not native_bf16(served.device):
        return served
    return load_model_dir(str(model_dir), served.device, "bf16", fused=True)


PAIRS_SHOWN = 8  # confused pairs drawn in confused_pairs.png (interpretation.json lists more)


def galleries(model: LoadedModel, why: dict, sample: Sequence[str], root: str | Path | None,
              folder: Path, split: str = "test") -> dict | None:
    """``folder/top_losses.png`` and ``folder/confused_pairs.png`` over heatmaps (``why``: the top
    losses and the confused pairs with examples, as ``interpret`` gives them), and the focus of an
    evenly spread :data:`SAMPLE` of ``sample`` (None for none, or a network without maps), from
    one pass of ``model`` over all of them. Without maps the galleries show the photos."""
    from dogbreed.plots import plot_confused_pairs, plot_top_losses

    regions = Regions.of(root)
    spread_out = spread(list(sample), SAMPLE)
    losses, pairs = [row["file"] for row in why["top_losses"]], [row.get("example") for row in why["confused_pairs"]]
    wanted = list(dict.fromkeys([*spread_out, *(p for p in losses + pairs[:PAIRS_SHOWN] if p is not None)]))
    looked, method = look(model, wanted, regions)
    plot_top_losses(why["top_losses"], folder / "top_losses.png", overlays(looked, losses), split)
    plot_confused_pairs(why["confused_pairs"][:PAIRS_SHOWN], folder / "confused_pairs.png",
                        overlays(looked, pairs[:PAIRS_SHOWN]))
    return focus([(looked[p].share, looked[p].area) for p in spread_out if p in looked], regions.name, method)
