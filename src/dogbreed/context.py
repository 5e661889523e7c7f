"""What every training path sets up from the config, built once: the device and arithmetic, the
data set (staged from S3 first), the network with its frozen part and presets, and how its images
reach the loop. The single run, a torchrun rank (embedding share or DDP), tuning's embedding warm-up
and each trial start from :func:`prepare`; below it, functions take the values they use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dogbreed import remote
from dogbreed.config import TrainConfig
from dogbreed.data.layout import IMAGE_EXTS, Layout, load_for_training
from dogbreed.distributed import ALONE, Ranks
from dogbreed.machine import resolve_device
from dogbreed.model import build_model, eval_preset, freeze
from dogbreed.runtime.presets import EvalPreset
from dogbreed.train import amp_dtype_for


@dataclass(frozen=True)
class Feed:
    """How a run's images reach the training loop (``batches.build_batches``)."""

    cached: bool  # a frozen backbone's head trains on cached embeddings
    batch_size: int
    seed: int
    aug_views: int
    workers: int | None
    cache_dir: str | None
    embed_backend: str
    sources: dict[str, str]  # a staged S3 copy's local path -> its object, which keys its embeddings


@dataclass
class RunContext:
    ranks: Ranks
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast's precision; None for fp32
    data: Layout
    backbone: str
    model: nn.Module
    weights_source: str  # where the backbone's weights came from, in words
    preset: EvalPreset
    frozen: list[nn.Module]  # modules that stay in eval mode while the rest trains
    feed: Feed


def prepare(cfg: TrainConfig, ranks: Ranks = ALONE, *, staged: remote.Staged | None = None,
            progress: bool = False) -> RunContext:
    """The run's context from ``cfg``: ``staged`` is the data set already staged (a tuning worker
    stages once for all its trials); otherwise an ``s3://`` data set is staged now."""
    device = resolve_device(cfg.device)
    staged = staged or remote.staged(cfg.data, IMAGE_EXTS, progress=progress, on_chunk=ranks.tick)
    data = load_for_training(staged.root)
    torch.manual_seed(cfg.seed)
    model, weights_source = build_model(cfg.backbone, len(data.labels.names), pretrained=cfg.pretrained,
                                        weights=cfg.weights)
    frozen = freeze(model, cfg.backbone, cfg.train_layers)
    # The ranks on a machine share its cores among their image decoders.
    workers = cfg.workers if cfg.workers is not None or not ranks.joined else ranks.local_cpus()
    feed = Feed(cached=cfg.uses_feature_cache, batch_size=cfg.batch_size, seed=cfg.seed, aug_views=cfg.aug_views,
                workers=workers, cache_dir=cfg.cache_dir, embed_backend=cfg.embed_backend, sources=staged.sources)
    return RunContext(ranks, device, amp_dtype_for(device, cfg.amp), data, cfg.backbone, model, weights_source,
                      eval_preset(cfg.backbone, cfg.image_size), frozen, feed)

