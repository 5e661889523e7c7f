"""Datasets and DataLoaders over image files; a bad image is skipped with a warning, never fatal."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from dogbreed.data.layout import Sample
from dogbreed.lifetime import loader_worker_init, uninterrupted
from dogbreed.machine import available_cpus
from dogbreed.runtime.presets import ImageDecodeError, load_image

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """(image tensor, class index, sample index) per file; ``None`` for a file that fails to decode.

    With ``view`` set, the random transform is seeded by (view, index), so the same view of the same
    image is identical in every run: what makes augmented embeddings cacheable.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, view: int | None = None, min_side: int | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.view = view
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_image(path, min_side=self.min_side)
        except ImageDecodeError as exc:
            log.warning("skipping unreadable image %s", exc)
            return None
        if self.view is None:
            return self.transform(img), label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * (self.view + 1) + index)
            return self.transform(img), label, index


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None


class _Loader(DataLoader):
    """A DataLoader whose new iterator, which starts the worker processes, a stop request (Ctrl-C of
    ``tune``) never cuts in two: the request is raised once the iterator is whole, which then ends its
    workers in order."""

    def __iter__(self):
        with uninterrupted():
            return super().__iter__()


def image_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int | None,
    device: torch.device,
    seed: int = 0,
    persistent: bool = True,
    batches: Sampler[list[int]] | None = None,
) -> DataLoader:
    """``persistent``: keep the worker processes between passes (loaders read every epoch); a loader
    read once lets its workers end with the pass. ``batches`` (a rank's part of each global batch,
    under torchrun) replaces ``batch_size`` and ``shuffle``. The workers end with this process,
    however it ends (``loader_worker_init``)."""
    workers = available_cpus() if workers is None else workers
    generator = torch.Generator().manual_seed(seed)
    return _Loader(
        dataset,
        batch_size=1 if batches is not None else batch_size,
        shuffle=shuffle and batches is None,
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skipping_bad,
        generator=generator,
        worker_init_fn=loader_worker_init(os.getpid()) if workers > 0 else None,
    )


def shutdown_workers(loader) -> None:
    """End a loader's persistent worker processes now. Left to the garbage collector, a finished run's
    workers are joined whenever it next runs, which stalled a later run in the same process (the demo,
    the Python API) for seconds at a time.

    Torch has no public call for this: a DataLoader keeps its persistent workers' iterator in the
    private ``_iterator``, whose private ``_shutdown_workers`` is what torch itself calls when the
    iterator is collected. tests/data/test_loaders.py pins both; any other loader (``TensorBatches``)
    has no workers and is left alone."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


class TensorBatches:
    """Mini-batches over cached embeddings, shaped like an image loader's (x, y, index) batches.

    ``features`` is (views, N, D): each epoch draws one random view per sample, which keeps the
    train-time augmentation of the image path at the cost of a tensor gather.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0,
                 samples: torch.Tensor | None = None):
        """``samples``: each row's index among the split's images (default: the row itself), what a
        batch reports as its third element, as an image loader does."""
        if features.dim() == 2:
            features = features.unsqueeze(0)
        self.features, self.labels = features, labels
        self.samples = samples
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.labels.numel() // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = self.labels.numel()
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        views = torch.randint(self.features.shape[0], (n,), generator=self.generator)
        order, views = order.to(self.labels.device), views.to(self.labels.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.features[views[idx], idx].float(), self.labels[idx], idx if self.samples is None else self.samples[idx]
