"""The frozen-backbone embedding cache: the backbone runs once per image (and augmented view),
then every epoch and every tuning trial trains the head on the stored embeddings.

Entries are keyed by everything that changes an embedding: the backbone's exact weights, the
transform, the view number and the file list (path, size, mtime). They are written atomically
and read back with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dogbreed.data.layout import Sample
from dogbreed.data.loaders import ImageDataset, image_loader
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_torch_save, file_lock
from dogbreed.hooks import NO_HOOKS, StepHooks
from dogbreed.runtime.loading import read_tensors
from dogbreed.runtime.network import set_head

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DOGBREED_CACHE") or Path.home() / ".cache" / "dogbreed")


def feature_extractor(model: nn.Module, backbone: str) -> nn.Module:
    """A copy of the network whose head is the identity: it outputs the head's input."""
    extractor = copy.deepcopy(model)
    set_head(extractor, backbone, nn.Identity())
    return extractor.eval().requires_grad_(False)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def files_digest(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Embeddings:
    features: torch.Tensor  # (N, D) float16
    labels: torch.Tensor  # (N,) int64
    ok: torch.Tensor  # (N,) bool: False for images that failed to decode


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None, extractor: nn.Module, *, device: torch.device,
                 amp_dtype: torch.dtype | None, batch_size: int, workers: int | None, progress: bool = True,
                 hooks: StepHooks = NO_HOOKS):
        self.root = Path(root) if root else default_cache_dir()
        self.extractor = extractor.to(device, memory_format=torch.channels_last)
        self.device, self.amp_dtype = device, amp_dtype
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.hooks = hooks  # a profiler times the extraction as the "embed" phase
        self.weights_id = weights_digest(extractor)
        self.hits = self.misses = 0
        self.embedded = 0  # images run through the backbone by this cache (misses only)
        self.embed_seconds = 0.0

    def key(self, samples: list[Sample], transform_id: str, view: int | None) -> str:
        text = f"{self.weights_id}|{transform_id}|view={view}|{files_digest(samples)}|amp={self.amp_dtype}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, samples: list[Sample], transform, transform_id: str, *, view: int | None, desc: str) -> Embeddings:
        path = self.root / f"{self.key(samples, transform_id, view)}.pt"
        if (emb := self._load(path)) is not None:
            return emb
        # Parallel tuning workers ask for the same entry at once: one computes, the others wait.
        with file_lock(path.with_suffix(".lock")):
            if (emb := self._load(path)) is not None:
                return emb
            self.misses += 1
            emb = self.compute(samples, transform, view=view, desc=desc)
            atomic_torch_save({"features": emb.features, "labels": emb.labels, "ok": emb.ok}, path)
        return emb

    def _load(self, path: Path) -> Embeddings | None:
        if not path.exists():
            return None
        try:
            doc = read_tensors(path)
        except Exception as exc:  # a damaged entry is recomputed, never trusted
            log.warning("embedding cache entry %s is unreadable (%s); recomputing", path, exc)
            return None
        self.hits += 1
        return Embeddings(doc["features"], doc["labels"], doc["ok"])

    def stats(self) -> dict:
        rate = self.embedded / self.embed_seconds if self.embed_seconds else None
        return {"hits": self.hits, "computed": self.misses, "images_embedded": self.embedded,
                "embed_seconds": round(self.embed_seconds, 3), "images_per_second": rate and round(rate, 2)}

    @torch.inference_mode()
    def compute(self, samples: list[Sample], transform, *, view: int | None, desc: str) -> Embeddings:
        started = time.perf_counter()
        # Eval transforms decode JPEGs no larger than needed, exactly as prediction does.
        dataset = ImageDataset(samples, transform, view=view, min_side=getattr(transform, "resize_size", None))
        loader = image_loader(dataset, self.batch_size, shuffle=False, workers=self.workers, device=self.device,
                              persistent=False)
        self.hooks.describe_loader("embed", loader)
        features: torch.Tensor | None = None
        ok = torch.zeros(len(samples), dtype=torch.bool)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        bar = tqdm(total=len(samples), desc=desc, unit="img", disable=not self.progress, leave=False)
        for batch in self.hooks.steps(loader, "embed"):
            if batch is None:
                continue
            images, _, index = batch
            with autocast:
                out = self.extractor(images.to(self.device, non_blocking=True, memory_format=torch.channels_last))
            if features is None:
                features = torch.zeros(len(samples), out.shape[1], dtype=torch.float16)
            features[index] = out.float().cpu().half()
            ok[index] = True
            bar.update(len(index))
        bar.close()
        if features is None:
            raise DogbreedError(f"no image could be decoded while {desc}; run `dogbreed data check` on the data set")
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.embedded += len(samples)
        self.embed_seconds += time.perf_counter() - started
        return Embeddings(features, labels, ok)
