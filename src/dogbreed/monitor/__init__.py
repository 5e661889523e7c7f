"""Debugger and profiler for training runs: system sampler, step timing, debugger tensors,
SageMaker's rules (live and over a finished run) and the report."""

from __future__ import annotations

from pathlib import Path

import torch

from dogbreed.monitor.monitor import NULL_MONITOR, Monitor, NullMonitor

__all__ = ["NULL_MONITOR", "Monitor", "NullMonitor", "open_monitor"]


def open_monitor(run_dir: Path, cfg, device: torch.device, *, resume: bool = False) -> Monitor:
    """The monitor for a run of ``cfg`` (a TrainConfig): starts sampling at once."""
    meta = {"config": {k: getattr(cfg, k) for k in ("backbone", "train_layers", "epochs", "batch_size", "lr",
                                                   "image_size", "amp", "workers", "seed")},
            "path": "cached embeddings" if cfg.uses_feature_cache else "images"}
    return Monitor(run_dir, device=device, meta=meta, interval_ms=cfg.profile_interval_ms,
                   debug_interval=cfg.debug_interval, trace_start=cfg.trace_start, trace_steps=cfg.trace_steps,
                   rules=cfg.rules, resume=resume)
