"""What a monitor compares, per image: its embedding, predicted breed, top-1 probability, "not a
dog" score, verdict, size and brightness; computed alike for the baseline (the validation split)
and for a window of captured requests.

The breed, probability, score and verdict come from the one inference path
(``dogbreed.runtime.pipeline``), with the artifact's own answer options, so they are what the
endpoint answered. Size and brightness are read from the encoded image itself: its header, and a
reduced decode (JPEG's own scaling) of at most 64 pixels a side, which costs a fraction of the
model's decode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dogbreed import machine
from dogbreed.batching import chunks, ordered
from dogbreed.runtime import pipeline
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import Options, RequestError

BATCH = 32
FACTS_SIDE = 64
VERDICTS = ("breed", "unsure", "not_a_dog")


@dataclass
class Observations:
    """One row per readable image (``embeddings`` may have no columns: an export without them),
    and how many were not readable."""

    embeddings: np.ndarray  # float32 [n, d]
    predicted: np.ndarray  # int [n], class index
    top1: np.ndarray  # float [n], calibrated
    ood: np.ndarray | None  # float [n], the "not a dog" score; None when the artifact has none
    verdicts: list[str]
    width: np.ndarray  # int [m]: every image whose header reads (m >= n)
    height: np.ndarray
    brightness: np.ndarray  # float [m], mean luma 0-255
    unreadable: int = 0
    keys: list = field(default_factory=list)  # per row: what the caller named the image (an event id, a path)

    @property
    def n(self) -> int:
        return len(self.predicted)


def image_facts(data: bytes) -> tuple[int, int, float] | None:
    """(width, height, mean luma 0-255) of an encoded image, or None where it does not open."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            img.draft("L", (FACTS_SIDE, FACTS_SIDE))  # JPEG: decode at 1/2 to 1/8 scale, greyscale
            small = img.convert("L")
            small.thumbnail((FACTS_SIDE, FACTS_SIDE))
            return size[0], size[1], float(np.asarray(small, dtype=np.float32).mean())
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def from_outputs(model: LoadedModel, logits: torch.Tensor, features: torch.Tensor | None,
                 facts: Sequence[tuple[int, int, float] | None], options: Options | None = None,
                 keys: Sequence | None = None, unreadable: int = 0) -> Observations:
    """Observations from the network's outputs for the readable images (``logits``, ``features``)
    and the facts of every image."""
    options = options or Options.of(model)
    probs = pipeline.probabilities(model, logits.float())
    ood = pipeline.ood_scores(model, logits.float(), None if features is None else features.float())
    verdicts = [pipeline.answer(model, row, options, None if ood is None else float(ood[i]))["verdict"]
                for i, row in enumerate(probs)]
    known = np.array([f for f in facts if f is not None], dtype=np.float64).reshape(-1, 3)
    emb = np.zeros((len(probs), 0), np.float32) if features is None else features.float().numpy()
    return Observations(emb, probs.argmax(dim=1).numpy(), probs.max(dim=1).values.double().numpy(),
                        None if ood is None else ood.double().numpy(), verdicts, known[:, 0].astype(int),
                        known[:, 1].astype(int), known[:, 2], unreadable, list(keys or []))


def observe(model: LoadedModel, images: Sequence[bytes], keys: Sequence | None = None, *, options: Options | None = None,
            max_pixels: int | None = None, progress=None) -> Observations:
    """Every image through the inference path, in batches, decoding the next two batches on a thread
    pool while the network runs this one (:func:`dogbreed.batching.ordered`). ``progress(n)`` hears
    each batch's size."""
    keys = list(keys) if keys is not None else list(range(len(images)))
    limit = max_pixels if max_pixels is not None else pipeline.DEFAULT_MAX_PIXELS

    def prepare(i: int):
        data = images[i]
        facts = image_facts(data)
        try:
            return i, facts, pipeline.decode(model, data, max_pixels=limit)
        except RequestError:
            return i, facts, None

    logits, features, facts, kept, unreadable = [], [], [], [], 0
    with ThreadPoolExecutor(max(1, machine.available_cpus())) as pool:
        for done in chunks(ordered(range(len(images)), prepare, pool, ahead=2 * BATCH), BATCH):
            pixels = []
            for i, fact, px in done:
                facts.append(fact)
                if px is None:
                    unreadable += 1
                    continue
                pixels.append(px)
                kept.append(keys[i])
            if pixels:
                z, f = pipeline.forward(model, pixels)
                logits.append(z)
                features.append(f)
            if progress:
                progress(len(done))
    if not logits:
        empty = torch.zeros(0, len(model.labels))
        return from_outputs(model, empty, None, facts, options, [], unreadable)
    joined = None if features[0] is None else torch.cat(features)
    return from_outputs(model, torch.cat(logits), joined, facts, options, kept, unreadable)
