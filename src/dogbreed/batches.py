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

from dogbreed.context import RunContext
from dogbreed.data.loaders import ImageDataset, TensorBatches, image_loader, shutdown_workers
from dogbreed.features import FeatureCache, feature_extractor
from dogbreed.hooks import NO_HOOKS, StepHooks
from dogbreed.model import registered, train_mode
from dogbreed.runtime.network import get_head
from dogbreed.runtime.presets import TrainPreset

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
    stepped: nn.Module | None = None  # what a training step runs: ``trainable``, or DDP around it

    def close(self) -> None:
        """End the loaders' worker processes now (a finished run must not leave them behind)."""
        for loader in (self.train, self.valid, self.test):
            shutdown_workers(loader)


def build_batches(ctx: RunContext, *, progress: bool = True, hooks: StepHooks = NO_HOOKS) -> Batches:
    if ctx.feed.cached:
        return cached_batches(ctx, progress=progress, hooks=hooks)
    return image_batches(ctx)


def cached_batches(ctx: RunContext, *, progress: bool = True, hooks: StepHooks = NO_HOOKS) -> Batches:
    """Frozen backbone: embed every image once (and ``aug_views`` augmented views of the training
    images), then train the head alone on those embeddings."""
    cache, (views, val, test) = embed(ctx, progress=progress, hooks=hooks)
    stats = cache.stats()
    detail = f"{stats['images_embedded']} images, {stats['images_per_second']} img/s"
    detail = f" on {stats['ranks']} ranks (rank 0: {detail})" if stats["ranks"] > 1 else f" ({detail})"
    log.info("embedding cache %s: %d hit(s), %d computed%s", cache.root, cache.hits, cache.misses,
             detail if cache.misses else "")

    device, feed = ctx.device, ctx.feed
    ok = torch.stack([v.ok for v in views]).all(dim=0)  # an unreadable image fails in every view
    # The embeddings (tens of MB for dogImages) live on the training device for the whole run.
    train_x = torch.stack([v.features[ok] for v in views]).to(device)
    head = get_head(ctx.model, ctx.backbone).to(device)
    return Batches(
        trainable=head, set_train=head.train,
        train=TensorBatches(train_x, views[0].labels[ok].to(device), feed.batch_size, shuffle=True, seed=feed.seed),
        valid=_split_batches(val, device), test=_split_batches(test, device),
        watched=registered(ctx.backbone).head + ".", cache_stats=stats, stepped=head,
    )


def embed(ctx: RunContext, *, progress: bool = True, hooks: StepHooks = NO_HOOKS):
    """The cache, and the embeddings of the training views, valid and test, in that order (in the
    share role every rank asks for them in this order; on ranks but 0 they are None)."""
    feed, splits = ctx.feed, ctx.data.splits
    expected = len(splits["train"]) * max(feed.aug_views, 1) + len(splits["valid"]) + len(splits["test"])
    cache = FeatureCache(feed.cache_dir, feature_extractor(ctx.model, ctx.backbone), device=ctx.device,
                         amp_dtype=ctx.amp_dtype, batch_size=max(feed.batch_size, 64), workers=feed.workers,
                         progress=progress, hooks=hooks, backend=feed.embed_backend, expected=expected,
                         ranks=ctx.ranks, sources=feed.sources)
    preset = ctx.preset
    train_preset = TrainPreset.matching(preset)
    eval_id = repr(preset)
    if feed.aug_views:
        views = [cache.get(splits["train"], train_preset, train_preset.describe(), view=v,
                           desc=f"embedding train view {v + 1}/{feed.aug_views}") for v in range(feed.aug_views)]
    else:
        views = [cache.get(splits["train"], preset, eval_id, view=None, desc="embedding train")]
    val = cache.get(splits["valid"], preset, eval_id, view=None, desc="embedding valid")
    test = cache.get(splits["test"], preset, eval_id, view=None, desc="embedding test")
    return cache, (views, val, test)


def _split_batches(emb, device: torch.device) -> TensorBatches:
    """A split's cached embeddings in order; the images that failed to decode are left out, and each
    batch still names its images by their index in the split."""
    return TensorBatches(emb.features[emb.ok].to(device), emb.labels[emb.ok].to(device), 1024, shuffle=False,
                         samples=emb.ok.nonzero().squeeze(1).to(device))


def image_batches(ctx: RunContext) -> Batches:
    """Some layers unfrozen (or the cache turned off): every epoch runs the network on images. Under
    DDP the network steps in DistributedDataParallel, each rank on its part of every global batch
    (``Ranks.train_batches``), and evaluates on its unpadded share of each split."""
    model, device, feed, ranks = ctx.model, ctx.device, ctx.feed, ctx.ranks
    model.to(device, memory_format=torch.channels_last)
    train_preset = TrainPreset.matching(ctx.preset) if feed.aug_views else ctx.preset
    share = -(-feed.batch_size // ranks.world)  # the largest part of a global batch a rank holds

    # Each rank augments with random numbers of its own (in the loader's workers, which draw their
    # seeds from its generator, or in this process); the order of the images is the sampler's.
    seed = feed.seed
    if ranks.joined:
        seed += ranks.rank
        torch.manual_seed(seed)  # the weights are rank 0's anyway: DDP sends them to every rank

    def loader(split: str, transform, shuffle: bool):
        dataset = ImageDataset(ctx.data.splits[split], transform, min_side=getattr(transform, "resize_size", None))
        parts = ranks.train_batches(len(dataset), feed.batch_size, feed.seed) if shuffle else None
        return image_loader(dataset if shuffle else ranks.shard(dataset), feed.batch_size if shuffle else max(share, 64),
                            shuffle=shuffle, workers=feed.workers, device=device, seed=seed, batches=parts,
                            persistent=split != "test")  # the test split is read once

    return Batches(trainable=model, set_train=lambda: train_mode(model, ctx.frozen),
                   train=loader("train", train_preset, True), valid=loader("valid", ctx.preset, False),
                   test=loader("test", ctx.preset, False), watched="", stepped=ranks.wrap(model, device))


def warm_cache(ctx: RunContext, *, progress: bool = True) -> dict:
    """Compute (or find) the run's cached embeddings without training: what tuning does once, with
    every core, before its workers start. Returns the cache statistics."""
    return cached_batches(ctx, progress=progress).cache_stats
