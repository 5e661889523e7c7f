"""The two ways a run feeds the one training loop:

- frozen backbone (``--train-layers head``, the default): every image goes through the backbone
  once (and ``aug_views`` augmented views of each training image), the embeddings are cached, and
  the loop trains the bare head on them;
- unfrozen layers (``layer4``, ``all``, or ``--no-feature-cache``): every epoch runs the network on
  images from DataLoaders.

Either way the loop gets a :class:`Batches`: what to train and the three splits' batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dogbreed import distributed
from dogbreed.config import TrainConfig
from dogbreed.data.layout import Layout, load_for_training
from dogbreed.data.loaders import ImageDataset, TensorBatches, image_loader, shutdown_workers
from dogbreed.features import FeatureCache, feature_extractor
from dogbreed.hooks import NO_HOOKS, StepHooks
from dogbreed.machine import resolve_device
from dogbreed.model import build_model, eval_preset, registered, train_mode
from dogbreed.runtime.network import get_head
from dogbreed.runtime.presets import EvalPreset, TrainPreset
from dogbreed.train import amp_dtype_for

log = logging.getLogger(__name__)

# Settings that change the embeddings themselves; a search over any of them cannot share one cache.
EMBEDDING_KEYS = {"backbone", "pretrained", "weights", "train_layers", "image_size", "aug_views", "feature_cache", "amp"}


@dataclass
class Batches:
    trainable: nn.Module  # what the optimizer trains: the bare head, or the network
    set_train: Callable[[], None]  # train mode for the trainable part (frozen BatchNorm stays in eval)
    train: Iterable
    valid: Iterable
    test: Iterable
    watched: str  # the trained tensors' name prefix inside the network ("fc." for a bare head)
    cache_stats: dict | None = None  # the embedding cache's hits, misses and speed
    stepped: nn.Module | None = None  # what a training step runs, when not ``trainable`` (DDP around it)

    def close(self) -> None:
        """End the loaders' worker processes now (a finished run must not leave them behind)."""
        for loader in (self.train, self.valid, self.test):
            shutdown_workers(loader)


def build_batches(cfg: TrainConfig, model: nn.Module, frozen: list[nn.Module], preset: EvalPreset, data: Layout,
                  device: torch.device, amp_dtype: torch.dtype | None, *, progress: bool = True,
                  hooks: StepHooks = NO_HOOKS) -> Batches:
    if cfg.uses_feature_cache:
        return cached_batches(cfg, model, preset, data, device, amp_dtype, progress=progress, hooks=hooks)
    return image_batches(cfg, model, frozen, preset, data, device)


def cached_batches(cfg: TrainConfig, model: nn.Module, preset: EvalPreset, data: Layout, device: torch.device,
                   amp_dtype: torch.dtype | None, *, progress: bool = True, hooks: StepHooks = NO_HOOKS) -> Batches:
    """Frozen backbone: embed every image once (and ``aug_views`` augmented views of the training
    images), then train the head alone on those embeddings."""
    cache, (views, val, test) = embed(cfg, model, preset, data, device, amp_dtype, progress=progress, hooks=hooks)
    stats = cache.stats()
    detail = f"{stats['images_embedded']} images, {stats['images_per_second']} img/s"
    detail = f" on {stats['ranks']} ranks (rank 0: {detail})" if stats["ranks"] > 1 else f" ({detail})"
    log.info("embedding cache %s: %d hit(s), %d computed%s", cache.root, cache.hits, cache.misses,
             detail if cache.misses else "")

    ok = torch.stack([v.ok for v in views]).all(dim=0)  # an unreadable image fails in every view
    # The embeddings (tens of MB for dogImages) live on the training device for the whole run.
    train_x = torch.stack([v.features[ok] for v in views]).to(device)
    head = get_head(model, cfg.backbone).to(device)
    return Batches(
        trainable=head, set_train=head.train,
        train=TensorBatches(train_x, views[0].labels[ok].to(device), cfg.batch_size, shuffle=True, seed=cfg.seed),
        valid=_split_batches(val, device), test=_split_batches(test, device),
        watched=registered(cfg.backbone).head + ".", cache_stats=stats,
    )


def embed(cfg: TrainConfig, model: nn.Module, preset: EvalPreset, data: Layout, device: torch.device,
          amp_dtype: torch.dtype | None, *, progress: bool = True, hooks: StepHooks = NO_HOOKS):
    """The cache, and the embeddings of the training views, valid and test, in that order (under
    torchrun every rank asks for them in this order; on ranks but 0 they are None)."""
    expected = len(data.splits["train"]) * max(cfg.aug_views, 1) + len(data.splits["valid"]) + len(data.splits["test"])
    cache = FeatureCache(cfg.cache_dir, feature_extractor(model, cfg.backbone), device=device, amp_dtype=amp_dtype,
                         batch_size=max(cfg.batch_size, 64), workers=cfg.workers, progress=progress, hooks=hooks,
                         backend=cfg.embed_backend, expected=expected)
    train_preset = TrainPreset.matching(preset)
    eval_id = repr(preset)
    if cfg.aug_views:
        views = [cache.get(data.splits["train"], train_preset, train_preset.describe(), view=v,
                           desc=f"embedding train view {v + 1}/{cfg.aug_views}") for v in range(cfg.aug_views)]
    else:
        views = [cache.get(data.splits["train"], preset, eval_id, view=None, desc="embedding train")]
    val = cache.get(data.splits["valid"], preset, eval_id, view=None, desc="embedding valid")
    test = cache.get(data.splits["test"], preset, eval_id, view=None, desc="embedding test")
    return cache, (views, val, test)


def _split_batches(emb, device: torch.device) -> TensorBatches:
    """A split's cached embeddings in order; the images that failed to decode are left out, and each
    batch still names its images by their index in the split."""
    return TensorBatches(emb.features[emb.ok].to(device), emb.labels[emb.ok].to(device), 1024, shuffle=False,
                         samples=emb.ok.nonzero().squeeze(1).to(device))


def image_batches(cfg: TrainConfig, model: nn.Module, frozen: list[nn.Module], preset: EvalPreset, data: Layout,
                  device: torch.device) -> Batches:
    """Some layers unfrozen (or the cache turned off): every epoch runs the network on images. Under
    torchrun the network steps in DistributedDataParallel, each rank on its part of every global
    batch, and evaluates on its unpadded share of each split."""
    model.to(device, memory_format=torch.channels_last)
    train_preset = TrainPreset.matching(preset) if cfg.aug_views else preset
    ranks = distributed.joined()
    batch_size = distributed.split_batch(cfg.batch_size) if ranks else cfg.batch_size

    # Each rank augments with random numbers of its own (in the loader's workers, which draw their
    # seeds from its generator, or in this process); the order of the images is the sampler's.
    seed = cfg.seed + distributed.rank() if ranks else cfg.seed
    if ranks:
        torch.manual_seed(seed)  # the weights are rank 0's anyway: DDP sends them to every rank

    def loader(split: str, transform, shuffle: bool):
        dataset = ImageDataset(data.splits[split], transform, min_side=getattr(transform, "resize_size", None))
        sampler = None
        if ranks:
            sampler = distributed.train_sampler(dataset, cfg.seed) if shuffle else None
            dataset = dataset if shuffle else distributed.shard(dataset)
        return image_loader(dataset, batch_size if shuffle else max(batch_size, 64), shuffle=shuffle,
                            workers=cfg.workers, device=device, seed=seed, sampler=sampler,
                            persistent=split != "test")  # the test split is read once

    return Batches(trainable=model, set_train=lambda: train_mode(model, frozen), train=loader("train", train_preset, True),
                   valid=loader("valid", preset, False), test=loader("test", preset, False), watched="",
                   stepped=distributed.wrap(model, device) if ranks else None)


def warm_cache(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Compute (or find) the run's cached embeddings without training: what tuning does once, with
    every core, before its workers start. Returns the cache statistics."""
    device = resolve_device(cfg.device)
    data = load_for_training(cfg.data)
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg.backbone, len(data.labels.names), pretrained=cfg.pretrained, weights=cfg.weights)
    preset = eval_preset(cfg.backbone, cfg.image_size)
    return cached_batches(cfg, model, preset, data, device, amp_dtype_for(device, cfg.amp), progress=progress).cache_stats
