"""A training run from config to artifact: data -> model -> batches -> fit -> run dir -> model.tar.gz.

    runs/<run>/config.yaml  labels.json  metrics.csv  checkpoints/{last,best}.pt  profile/
              and what ``dogbreed.outputs`` writes when it ends (results, plots, the artifact)
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch

from dogbreed import config as cfgmod
from dogbreed import outputs, remote, tracking
from dogbreed.batches import build_batches, embed
from dogbreed.checkpoints import Checkpoints, FitState, check_resumable
from dogbreed.config import TrainConfig
from dogbreed.context import RunContext, prepare
from dogbreed.data.layout import IMAGE_EXTS, SPLITS, scan
from dogbreed.distributed import ALONE, Ranks
from dogbreed.errors import DogbreedError
from dogbreed.files import make_folder
from dogbreed.hooks import NO_HOOKS, NoHooks
from dogbreed.outputs import RunResult
from dogbreed.train import METRIC_COLUMNS, cosine_schedule, fit, format_epoch, sagemaker_line

log = logging.getLogger(__name__)
LOCAL_OUT = "runs"  # where a run with --out s3://... is written before its upload


def train(cfg: TrainConfig, *, ranks: Ranks = ALONE, staged: remote.Staged | None = None,
          resume: str | os.PathLike | None = None, progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
          finish: bool = True, keep_checkpoints: bool = True, tags: dict | None = None) -> RunResult:
    """Run one training end to end. ``ranks``: this process's place under torchrun
    (``distributed.session``); ``staged``: the data set already staged (else ``prepare`` stages it).
    ``on_epoch(row)`` sees each epoch's metrics (tuning reports and prunes through it).
    ``finish=False`` stops after the epochs: no test evaluation, plots or artifact (what a tuning
    trial needs); ``keep_checkpoints=False`` removes the checkpoints when the run ends, however it
    ends. ``tags``: more tags for the run's MLflow run, where it is tracked (``tracking``). Rank 0
    alone writes; the other ranks return a result without a run folder. In the share
    role they embed their share and end; under DDP they train in step with rank 0 and evaluate
    their shares."""
    if not ranks.writer:
        ctx = prepare(cfg, ranks, staged=staged)
        if ranks.shares:
            embed(ctx, progress=False)
            return RunResult(None, None, {}, 0, [])
        # A resumed rank reads the checkpoint too (the run folder is shared, as its config.yaml is).
        return _follow(ctx, cfg, resume, finish)
    if resume:
        check_resumable(Path(resume), cfg.epochs)
    if remote.is_s3(cfg.out) and finish:
        remote.check_writable(cfg.out)  # now, not after the training
    staged = staged or remote.staged(cfg.data, IMAGE_EXTS, progress=progress, on_chunk=ranks.tick)
    scan(staged.root)  # a missing or misshapen data set fails before any folder is made or changed
    uri = tracking.tracking_uri(cfg.tracking_uri, cfg.track, LOCAL_OUT if remote.is_s3(cfg.out) else cfg.out)
    opener = tracking.Tracker.optional(uri) if finish else None  # a missing MLflow fails here, before any work
    run_dir = Path(resume) if resume else new_run_dir(cfg)
    tracker = opener(run_dir.name, {"run_dir": str(run_dir.resolve()), **(tags or {})}, remember=run_dir,
                     run_id=tracking.earlier_run(run_dir, uri) if resume else None) if opener else None
    try:
        if tracker and not tracker.attached:  # a resumed run logged its params when it began (MLflow refuses changes)
            tracker.params(cfg.to_dict())
        elif tracker:
            tracker.tags({"resumed": True, "resumed_epochs": cfg.epochs})
        result = _observed(run_dir, cfg, ranks, staged, resume=bool(resume), progress=progress,
                           on_epoch=tracking.also(on_epoch, tracker), finish=finish,
                           tracked=tracker.reference if tracker else None)
    except BaseException as exc:
        if tracker:
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        # A run that fails before its first checkpoint leaves nothing behind.
        if not resume and not (run_dir / "checkpoints" / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        elif (run_dir / "profile").is_dir():
            log.info("profile data kept in %s; `dogbreed report %s` reports what was collected", run_dir / "profile", run_dir)
        raise
    finally:
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if remote.is_s3(cfg.out) and result.artifact:
        result.uploaded = remote.upload_run(run_dir, cfg.out)
    if tracker:
        tracking.log_finished_run(tracker, run_dir)
        tracker.close()
    return result


def _follow(ctx: RunContext, cfg: TrainConfig, resume, finish: bool) -> RunResult:
    """A rank but 0 under DDP: steps beside rank 0; when profiled, its step times and system
    samples go to rank 0's profile."""
    hooks = NO_HOOKS
    if cfg.profile and finish:
        from dogbreed.monitor.monitor import RankRecorder

        hooks = RankRecorder(ctx.ranks, cfg.profile_interval_ms)
    status = "failed"
    try:
        result = _run(Path(resume) if resume else None, cfg, ctx, hooks, resume=bool(resume), progress=False,
                      on_epoch=None, finish=finish)
        status = "completed"
        return result
    finally:
        hooks.close(status)


def new_run_dir(cfg: TrainConfig) -> Path:
    """A new folder under ``--out`` (with ``--out s3://...``, under the local ``runs/`` it uploads from)."""
    base = make_folder(LOCAL_OUT if remote.is_s3(cfg.out) else cfg.out, "--out")
    name = cfg.name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.backbone}"
    run_dir, n = base / name, 1
    while True:
        try:
            run_dir.mkdir()  # atomic: of two runs started together with one name, one gets "-2"
            break
        except FileExistsError:
            n += 1
            run_dir = base / f"{name}-{n}"
    (run_dir / "checkpoints").mkdir()
    return run_dir


def _observed(run_dir: Path, cfg: TrainConfig, ranks: Ranks, staged: remote.Staged, *, resume: bool, progress: bool,
              on_epoch, finish: bool, tracked=None) -> RunResult:
    """The run inside its profiler, when it has one (tuning trials, ``finish=False``, run unobserved)."""
    if cfg.rules and not cfg.profile:
        log.warning("--rules %s has no effect with --no-profile", cfg.rules)
    ctx = prepare(cfg, ranks, staged=staged)
    if not (cfg.profile and finish):
        return _run(run_dir, cfg, ctx, NO_HOOKS, resume=resume, progress=progress, on_epoch=on_epoch, finish=finish,
                    tracked=tracked)
    monitor = _open_monitor(run_dir, cfg, ctx, resume=resume)
    status = "failed"
    try:
        result = _run(run_dir, cfg, ctx, monitor, resume=resume, progress=progress, on_epoch=on_epoch, finish=finish,
                      tracked=tracked)
        status = "completed"
        return result
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        monitor.close(status)
        if status == "completed":
            _report(run_dir)


def _open_monitor(run_dir: Path, cfg: TrainConfig, ctx: RunContext, *, resume: bool):
    from dogbreed.monitor import Monitor  # the profiler's stack (psutil, rules, tensorboard) only when profiling

    meta = {"config": {k: getattr(cfg, k) for k in ("backbone", "train_layers", "epochs", "batch_size", "lr",
                                                   "image_size", "amp", "workers", "seed")},
            "path": "cached embeddings" if cfg.uses_feature_cache else "images",
            # the ranks stepping together in DDP, whose records the profile gathers
            "ranks": ctx.ranks.world if ctx.ranks.ddp else 1}
    return Monitor(run_dir, device=ctx.device, ranks=ctx.ranks, meta=meta, interval_ms=cfg.profile_interval_ms,
                   debug_interval=cfg.debug_interval, trace_start=cfg.trace_start, trace_steps=cfg.trace_steps,
                   rules=cfg.rules, resume=resume)


def _report(run_dir: Path) -> None:
    from dogbreed.monitor.report import triggered, write_report

    try:
        report = write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; the report can be rebuilt
        log.warning("could not write the profile report (%s: %s); retry with `dogbreed report %s`",
                    type(exc).__name__, exc, run_dir)
        return
    fired = [r["rule"] for r in triggered(report.rules)]
    log.info("profile report: %s (rules triggered: %s)", report.html, ", ".join(fired) or "none")


def _run(run_dir: Path | None, cfg: TrainConfig, ctx: RunContext, hooks: NoHooks, *, resume: bool, progress: bool,
         on_epoch, finish: bool, tracked=None) -> RunResult:
    """The epochs and, with ``finish``, the outputs. Only the writer (rank 0) owns ``run_dir``: a
    rank but 0 under DDP steps beside it, reads the run's checkpoint to resume, and writes nothing."""
    started = time.perf_counter()
    ranks, labels, writer = ctx.ranks, ctx.data.labels, ctx.ranks.writer

    # Paths saved absolute: `--resume` works from any folder.
    paths = {k: str(Path(v).resolve()) for k in ("data", "out", "weights", "cache_dir", "rules")
             if (v := getattr(cfg, k)) and not remote.is_s3(v)}
    if writer:
        cfgmod.save_yaml(dataclasses.replace(cfg, **paths), run_dir / "config.yaml")
        labels.write(run_dir / "labels.json")
    hooks.describe_data(labels.names, ctx.data.counts()["train"])
    log.info("run %s: %s (%s), %d classes, %d/%d/%d images, train_layers=%s, device=%s, amp=%s",
             run_dir, cfg.backbone, ctx.weights_source, len(labels.names), *(len(ctx.data.splits[s]) for s in SPLITS),
             cfg.train_layers, ctx.device, {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(ctx.amp_dtype, "off"))

    batches = build_batches(ctx, progress=progress, hooks=hooks)
    for phase, loader in (("train", batches.train), ("eval", batches.valid), ("test", batches.test)):
        hooks.describe_loader(phase, loader)
    params = [p for p in batches.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * len(batches.train), cfg.scheduler)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.to_dict()) if run_dir else None
    shuffle = getattr(batches.train, "generator", None)
    if resume and checkpoints.last.exists():
        state = checkpoints.restore(batches.trainable, optimizer, scheduler, shuffle)
    else:
        if resume:  # killed before its first epoch ended (while embedding, say): start over, same config
            log.info("resuming %s: it has no finished epoch, so it trains from epoch 1 with its saved config", run_dir)
        state = FitState()
    # In the share role rank 0 trains the head alone: its steps are its own.
    stepping = ranks if ranks.ddp else ALONE
    if (epoch := stepping.from_main(state.epoch)) != state.epoch:
        raise DogbreedError(f"rank {ranks.rank} would resume after epoch {state.epoch} from {run_dir}, rank 0 "
                            f"after epoch {epoch}: every rank must read the same run folder (on several machines, "
                            f"a shared one)")
    hooks.watch(batches.trainable, prefix=batches.watched, start_step=state.epoch * len(batches.train))

    def report(row: dict) -> None:
        log.info(format_epoch(row, cfg.epochs))
        log.info(sagemaker_line(row))
        if writer:
            write_metrics(state.history, run_dir / "metrics.csv")
        if on_epoch:
            on_epoch(row)

    try:
        state = fit(batches.trainable, batches.train, batches.valid, epochs=cfg.epochs, optimizer=optimizer,
                    scheduler=scheduler, device=ctx.device, amp_dtype=ctx.amp_dtype, label_smoothing=cfg.label_smoothing,
                    set_train=batches.set_train, patience=cfg.patience, checkpoints=checkpoints if writer else None,
                    state=state, on_epoch=report, progress=progress, hooks=hooks, stepped=batches.stepped,
                    ranks=stepping)
    finally:
        batches.close()
    if not finish:
        return RunResult(run_dir if writer else None, None, {}, state.best_epoch, state.history)
    if writer:
        checkpoints.load_best(batches.trainable)
    stepping.broadcast_module(batches.trainable)  # under DDP every rank judges the best epoch, on its shares
    # valid always: calibration, the "not a dog" threshold, "unsure" and the monitor's baseline are fitted on it
    judged = outputs.judge(ctx, batches, hooks, valid=True, train=cfg.reject == "mahalanobis")
    batches.close()
    if not writer:
        return RunResult(None, None, {}, state.best_epoch, state.history)
    with ranks.busy():  # the other ranks wait for rank 0 to write
        return outputs.finish(run_dir, cfg, ctx, judged, state, hooks, cache_stats=batches.cache_stats,
                              seconds=time.perf_counter() - started, tracked=tracked() if tracked else None)


def write_metrics(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history)
