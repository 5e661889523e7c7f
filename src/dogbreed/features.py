"""The frozen-backbone embedding cache: the backbone runs once per image (and augmented view),
then every epoch and every tuning trial trains the head on the stored embeddings.

Entries are keyed by everything that changes an embedding: the backbone's exact weights, the
transform, the view number, the file list (path, size, mtime) and the arithmetic (fp32 or bf16).
They are written atomically and read back with ``weights_only=True``.

The backbone runs on the fastest backend where it runs (``--embed-backend auto``): PyTorch at the
run's precision, or ONNX Runtime fp32 (the backbone exported once per weights, kept in the cache).
On a CPU the forward batch size is measured on the work itself (:class:`Chunks`: every image is
embedded once, none run again to time it). Auto exports and times ONNX Runtime only when the
images still to embed would keep eager busy for over :data:`EXPORT_WORTH_S` seconds, so that a
small job never waits for an export. A cache that finds every entry never runs the backbone at all.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import statistics
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from dogbreed.config import EMBED_BACKENDS
from dogbreed.data.layout import Sample
from dogbreed.data.loaders import ImageDataset, image_loader
from dogbreed.distributed import ALONE, Ranks
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_torch_save, default_cache_dir, file_lock
from dogbreed.hooks import NO_HOOKS, StepHooks
from dogbreed.machine import available_cpus
from dogbreed.onnx_export import onnx_export
from dogbreed.runtime import fusion
from dogbreed.runtime.backends import MIN_PASSES, WARM_UPS, Selection
from dogbreed.runtime.loading import read_tensors
from dogbreed.runtime.network import OnnxModel, set_head

log = logging.getLogger(__name__)
IN_PROCESS = "torch's threads take every CPU, so the images are decoded between the backbone's batches"
EXPORT_WORTH_S = 60.0  # auto exports the backbone only when eager would still be embedding for longer than this


def feature_extractor(model: nn.Module, backbone: str) -> nn.Module:
    """A copy of the network whose head is the identity: it outputs the head's input, with each
    BatchNorm folded into the convolution that feeds it (``runtime.fusion``), which the frozen
    backbone never needs again."""
    extractor = copy.deepcopy(model)
    set_head(extractor, backbone, nn.Identity())
    return fusion.fold_batchnorms(extractor)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def files_digest(samples: list[Sample], sources: dict[str, str] | None = None) -> str:
    """The file list's identity: each file's path, size and mtime, or for a staged copy its S3
    object (``sources``: local path -> object), wherever the copy lies."""
    h = hashlib.sha256()
    for path, label in samples:
        if sources and (source := sources.get(str(path))):
            h.update(f"{source}\0{label}\n".encode())
            continue
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Embeddings:
    features: torch.Tensor  # (N, D) float16
    labels: torch.Tensor  # (N,) int64
    ok: torch.Tensor  # (N,) bool: False for images that failed to decode


class EmbeddingStore:
    """Entries on disk by key: written atomically, read back with ``weights_only=True``; a damaged
    entry counts as missing (it is recomputed, never trusted)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else default_cache_dir()
        self.hits = 0

    def load(self, key: str) -> Embeddings | None:
        path = self.root / f"{key}.pt"
        if not path.exists():
            return None
        try:
            doc = read_tensors(path)
        except Exception as exc:  # noqa: BLE001 - any damage means the same: recompute
            log.warning("embedding cache entry %s is unreadable (%s); recomputing", path, exc)
            return None
        self.hits += 1
        return Embeddings(doc["features"], doc["labels"], doc["ok"])

    def first(self, keys: list[str]) -> Embeddings | None:
        """The first of ``keys`` stored, or None."""
        return next((emb for key in keys if (emb := self.load(key)) is not None), None)

    def save(self, key: str, emb: Embeddings) -> None:
        atomic_torch_save({"features": emb.features, "labels": emb.labels, "ok": emb.ok}, self.root / f"{key}.pt")

    def lock(self, key: str):
        """Held while one process computes ``key``: parallel tuning workers ask for one entry at once."""
        return file_lock(self.root / f"{key}.lock")


class FeatureCache:
    """The run's embeddings: found in the store by key, or computed on the fastest backend."""

    def __init__(self, root: str | os.PathLike | None, extractor: nn.Module, *, device: torch.device,
                 amp_dtype: torch.dtype | None, batch_size: int, workers: int | None, progress: bool = True,
                 hooks: StepHooks = NO_HOOKS, backend: str = "auto", expected: int = 0, ranks: Ranks = ALONE,
                 sources: dict[str, str] | None = None):
        if backend not in EMBED_BACKENDS:
            raise DogbreedError(f"--embed-backend {backend!r} is not one of: {', '.join(EMBED_BACKENDS)}")
        self.store = EmbeddingStore(root)
        self.root = self.store.root
        self.extractor = extractor.to(device, memory_format=torch.channels_last)
        self.device, self.amp_dtype = device, amp_dtype
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.hooks = hooks  # a profiler times the extraction as the "embed" phase
        self.weights_id = weights_digest(extractor)
        self.misses = 0
        self.embedded = 0  # images run through the backbone by this cache (misses only)
        self.embed_seconds = 0.0
        self.exchange_seconds = 0.0  # under torchrun: waiting for the other ranks' shares and summing them
        self.backend = backend  # asked; ``choice`` says what ran, once the first miss chose it
        self.expected = expected  # images the run will ask for in all, for auto's estimate of the work left
        self.choice: dict | None = None  # results.json's feature_cache.backend, once decided
        self._run = None  # images -> embeddings on the backend running
        self._network = extractor  # what eager runs: on a CPU, fused once the first miss starts
        self._chunks: Chunks | None = None  # the forward batch sizes being measured on a CPU
        self._race: Selection | None = None
        self._onnx_why: str | None = ""  # why ONNX Runtime is not used ("" while undecided, None if it is)
        self._export_seconds: float | None = None
        self._precision = amp_dtype  # of the backend running: ONNX Runtime runs fp32
        self.ranks = ranks  # in the share role every rank embeds its share and rank 0 keeps the entries
        self.sources = sources  # staged S3 copies' objects, which key their images

    def key(self, samples: list[Sample], transform_id: str, view: int | None, precision: torch.dtype | None = None) -> str:
        text = f"{self.weights_id}|{transform_id}|view={view}|{files_digest(samples, self.sources)}|amp={precision}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, samples: list[Sample], transform, transform_id: str, *, view: int | None, desc: str) -> Embeddings:
        """The entry, computed if missing. Entries of both precisions the run could use count (fp32
        from ONNX Runtime serves a bf16 run as well as its own, and the other way round): the
        precision the chosen backend runs first."""
        if self.ranks.shares:
            return self._get_shared(samples, transform, transform_id, view=view, desc=desc)
        keys = self._keys(samples, transform_id, view)
        if (emb := self.store.first(keys)) is not None:
            return emb
        with self.store.lock(keys[0]):  # one computes, the others wait and find it
            if (emb := self.store.first(keys)) is not None:
                return emb
            self.misses += 1
            emb = self.compute(samples, transform, view=view, desc=desc)
            self.store.save(self.key(samples, transform_id, view, self._precision), emb)
        return emb

    @property
    def hits(self) -> int:
        return self.store.hits

    def _keys(self, samples: list[Sample], transform_id: str, view: int | None) -> list[str]:
        precisions = list(dict.fromkeys([self._precision, self.amp_dtype, None]))
        return [self.key(samples, transform_id, view, p) for p in precisions]

    def _get_shared(self, samples: list[Sample], transform, transform_id: str, *, view: int | None,
                    desc: str) -> Embeddings | None:
        """Under torchrun: rank 0's cache decides for all; on a miss every rank embeds its share and
        rank 0 sums them into the entry and stores it. The other ranks get None: they train nothing."""
        ranks = self.ranks
        found = None
        if ranks.main:
            found = self.store.first(self._keys(samples, transform_id, view))
        if ranks.agree(found is not None):
            return found
        self.misses += 1
        mine = self.compute(samples, transform, view=view, desc=desc, indices=ranks.share(len(samples)))
        started = time.perf_counter()  # includes the wait for the slowest rank's share
        features = ranks.sum_to_main(mine.features.float()).half()
        ok = ranks.sum_to_main(mine.ok.int()) > 0
        self.exchange_seconds += time.perf_counter() - started
        if not ranks.main:
            return None
        if not ok.any():
            raise DogbreedError(f"no image could be decoded while {desc}; run `dogbreed data check` on the data set")
        emb = Embeddings(features, mine.labels, ok)
        self.store.save(self.key(samples, transform_id, view, self._precision), emb)
        return emb

    def stats(self) -> dict:
        if self._run is not None and self.choice is None:  # the job ended before every chunk size was timed
            self._decided()
        rate = self.embedded / self.embed_seconds if self.embed_seconds else None
        return {"hits": self.hits, "computed": self.misses, "images_embedded": self.embedded,
                "embed_seconds": round(self.embed_seconds, 3), "images_per_second": rate and round(rate, 2),
                "backend": self.choice, "ranks": self.ranks.world if self.ranks.shares else 1,
                "exchange_seconds": round(self.exchange_seconds, 3)}

    @torch.inference_mode()
    def compute(self, samples: list[Sample], transform, *, view: int | None, desc: str,
                indices: Sequence[int] | None = None) -> Embeddings:
        """Every image's embedding or, with ``indices``, those images' (a rank's share; the others
        stay zero, and a share that decoded nothing still has the others' width)."""
        started = time.perf_counter()
        # Eval transforms decode JPEGs no larger than needed, exactly as prediction does. Images keep
        # their index in ``samples`` in a share too, and with it their augmentation's seed.
        dataset = ImageDataset(samples, transform, view=view, min_side=getattr(transform, "resize_size", None))
        part = dataset if indices is None else Subset(dataset, list(indices))
        workers = self._decoders()
        loader = image_loader(part, self.batch_size, shuffle=False, workers=workers, device=self.device,
                              persistent=False)
        self.hooks.describe_loader("embed", loader, in_process=IN_PROCESS if workers == 0 and self.workers is None else None)
        features: torch.Tensor | None = None
        ok = torch.zeros(len(samples), dtype=torch.bool)
        bar = tqdm(total=len(part), desc=desc, unit="img", disable=not self.progress, leave=False)
        precision = self._precision
        for batch in self.hooks.steps(loader, "embed"):
            self.ranks.tick()
            if batch is None:
                continue
            images, _, index = batch
            images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            if self._run is None:
                self._start(images)
                precision = self._precision
            out = self._run(images)
            if self.choice is None:
                total = self.expected or self.embedded + len(samples)
                self._choose(images, left=max(total - self.embedded - int(ok.sum()) - len(index), 0))
            if self._precision != precision:  # ONNX Runtime (fp32) took over from eager bf16: one precision an entry
                bar.close()
                self.embed_seconds += time.perf_counter() - started
                return self.compute(samples, transform, view=view, desc=desc, indices=indices)
            if features is None:
                features = torch.zeros(len(samples), out.shape[1], dtype=torch.float16)
            features[index] = out.float().cpu().half()
            ok[index] = True
            bar.update(len(index))
        bar.close()
        if indices is not None:  # the ranks agree on the width before they sum their shares
            width = self.ranks.largest(0 if features is None else features.shape[1])
            features = torch.zeros(len(samples), width, dtype=torch.float16) if features is None else features
        if features is None:
            raise DogbreedError(f"no image could be decoded while {desc}; run `dogbreed data check` on the data set")
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        self.embedded += len(part)
        self.embed_seconds += time.perf_counter() - started
        return Embeddings(features, labels, ok)

    def _decoders(self) -> int | None:
        """The loader's worker processes: as asked (``--workers``); by default, on a GPU every CPU
        (``image_loader``'s default), on a CPU only the CPUs that torch's own threads leave free,
        none where they take them all. There the backbone's threads keep every core busy, so the
        workers could only take turns with them, and each split's loader forks its workers anew,
        after which this process copies every page of its kept heap the first time it writes it.
        Measured (Intel Xeon with AMX, 2 CPUs, resnet50 bf16, 680 images): 9.97 s decoding in this
        process against 12.28 s with 2 worker processes and 10.6 s with 2 decoding threads."""
        if self.workers is not None or self.device.type != "cpu":
            return self.workers
        return max(available_cpus() - torch.get_num_threads(), 0)

    def _eager(self, images: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            return self._network(images)

    def _start(self, images: torch.Tensor) -> None:
        """Before the first image: what runs it. Eager (on a CPU in measured chunks), unless ONNX
        Runtime is asked for, which is exported first."""
        self._race = Selection(self.backend, "eager", any_batch=True)
        if self.backend == "eager":
            self._onnx_why = "asked for"
        elif self.ranks.joined:
            self._onnx_why = "under torchrun every rank embeds on eager, so that their shares are alike"
        elif self.device.type != "cpu":
            self._onnx_why = f"ONNX Runtime runs on the CPU, the backbone on {self.device}"
        run = self._eager
        if self.device.type == "cpu":  # convolutions fused with their activations and sums: 1.6x in bf16 on resnet50
            self._network = fusion.ForCpu(self.extractor, self.amp_dtype or torch.float32)
        if self.backend == "onnx" and not self._onnx_why:
            run, self._onnx_why, self._race.chosen = self._onnx(images), None, "onnx"
            self._precision = None
        self._chunks = Chunks(run, self.batch_size) if self.device.type == "cpu" else None
        self._run = self._chunks or run

    def _choose(self, images: torch.Tensor, left: int) -> None:
        """After each batch until decided: once eager's first chunk size is timed, whether the
        ``left`` images are worth an ONNX export (and then the faster of the two on this batch);
        once every size is timed, the batch size. Said in one line."""
        chunks, race = self._chunks, self._race
        rates = chunks.rates() if chunks else {}
        if self._onnx_why == "" and rates:
            eager_rate = max(rates.values())
            if self.backend == "auto" and left / eager_rate < EXPORT_WORTH_S:
                self._onnx_why = f"{left} images are ~{left / eager_rate:.0f}s of eager work, too few to pay for an ONNX export"
            else:
                onnx = self._onnx(images)
                sizes = {size: images[:size] for size in chunks.sizes if size <= len(images)} or {len(images): images}
                race.record("eager", rates)
                if race.measure("onnx", onnx, sizes):
                    self._chunks, self._precision, self._onnx_why = None, None, None
                    self._run = lambda images: _chunked(onnx, race.batch("onnx"), images)
                    return self._decided()
                self._onnx_why = "eager measured faster"
        if chunks is None or chunks.done:
            self._decided()

    def _decided(self) -> None:
        race, chunks = self._race, self._chunks
        if chunks is not None and chunks.rates():
            race.record(race.chosen, chunks.rates())
        if self._onnx_why == "":
            self._onnx_why = "the job ended before eager was timed"
        if self._onnx_why:
            race.skipped["onnx"] = self._onnx_why
        chunk = race.batch(race.chosen) if race.measured else None
        self.choice = {  # results.json's feature_cache.backend
            "asked": self.backend, "chosen": race.chosen, "images": self.expected,
            "measured": {name: {"batch": race.batch(name), "images_per_second": round(race.speed(name), 2)}
                         for name in race.measured},
            **({} if self._export_seconds is None else {"export_seconds": self._export_seconds}),
            "why": self._onnx_why or None, "batch": chunk}
        eager_name = f"eager {'bf16' if self.amp_dtype == torch.bfloat16 else 'fp32' if self.amp_dtype is None else self.amp_dtype}"
        rates = ", ".join(f"{name} {race.speed(name):.1f} at batch {race.batch(name)}" for name in race.measured)
        log.info("embedding on %s%s%s", eager_name if race.chosen == "eager" else "onnx (ONNX Runtime fp32)",
                 f" (img/s: {rates})" if rates else "", f"; onnx not used: {self._onnx_why}" if self._onnx_why else "")

    def _onnx(self, images: torch.Tensor) -> OnnxModel:
        """The backbone in ONNX Runtime, exported first where this cache has no export for its weights."""
        path = self.root / "onnx" / f"{self.weights_id}-{images.shape[-1]}.onnx"
        self._export_seconds = self._export(path, images)
        return OnnxModel(str(path))

    def _export(self, path: Path, images: torch.Tensor) -> float:
        """The backbone as ONNX, once per weights and crop size (kept beside the embeddings); seconds spent."""
        if path.exists():
            return 0.0
        started = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):
            if not path.exists():
                partial = path.with_suffix(f".{os.getpid()}.partial")
                try:
                    with torch.inference_mode(False):  # the exporter traces: outside inference mode, on a fresh tensor
                        example = torch.zeros(2, *images.shape[1:])
                        onnx_export(self.extractor.to(memory_format=torch.contiguous_format), example, str(partial),
                                    ["features"])
                    os.replace(partial, path)
                finally:
                    partial.unlink(missing_ok=True)
                    self.extractor.to(memory_format=torch.channels_last)
        return round(time.perf_counter() - started, 2)


CHUNKS = (8, 16, 32)  # forward batch sizes a CPU tries (the loader's batches are larger: 64)


class Chunks:
    """``run`` over each loader batch in chunks, whose size is measured on the work itself: every
    size of :data:`CHUNKS` up to the batch first runs ``WARM_UPS`` untimed chunks and
    ``MIN_PASSES`` timed ones (as every race times: runtime/backends.timed), then the fastest runs
    the rest. Nothing is run twice to time it: timing copies of the first batch at three sizes
    cost a third of a small job's embedding."""

    def __init__(self, run, batch_size: int):
        self.run = run
        self.sizes = [size for size in CHUNKS if size <= batch_size] or [batch_size]
        self.plan = [(size, n >= WARM_UPS) for size in self.sizes for n in range(WARM_UPS + MIN_PASSES)]
        self.times: dict[int, list[float]] = {size: [] for size in self.sizes}
        self.size: int | None = None  # the fastest, once every size is timed

    @property
    def done(self) -> bool:
        return not self.plan

    def rates(self) -> dict[int, float]:
        """Images per second at each size timed so far (the median pass)."""
        return {size: size / statistics.median(times) for size, times in self.times.items() if times}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs, start = [], 0
        while start < len(images):
            size, timing = self.plan[0] if self.plan else (self.size, False)
            chunk = images[start:start + size]
            began = time.perf_counter()
            outputs.append(self.run(chunk))
            if self.plan and len(chunk) == size:  # a batch's short tail neither warms nor times its size
                if timing:
                    self.times[size].append(time.perf_counter() - began)
                self.plan.pop(0)
                if not self.plan:
                    rates = self.rates()
                    self.size = max(rates, key=rates.__getitem__)
            start += len(chunk)
        return torch.cat(outputs)


def _chunked(run, size: int, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([run(images[start:start + size]) for start in range(0, len(images), size)])
