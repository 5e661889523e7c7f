"""A training run from config to artifact: data -> model -> batches -> fit -> run dir -> model.tar.gz.

    runs/<run>/config.yaml  metrics.csv  labels.json  results.json  per_class.csv
              checkpoints/{last,best}.pt  curves.png  confusion.png  model.tar.gz  profile/
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from dogbreed import config as cfgmod
from dogbreed.artifact import model_meta, write_artifact, write_model_dir
from dogbreed.batches import Batches, build_batches
from dogbreed.checkpoints import Checkpoints, FitState, check_resumable
from dogbreed.config import TrainConfig
from dogbreed.data.layout import SPLITS, Labels, load_for_training, scan
from dogbreed.files import atomic_write_text, make_folder
from dogbreed.hooks import NO_HOOKS, NoHooks
from dogbreed.machine import resolve_device
from dogbreed.model import build_model, eval_preset, freeze
from dogbreed.plots import confusion_matrix, plot_confusion, plot_curves
from dogbreed.runtime.presets import EvalPreset
from dogbreed.train import (
    METRIC_COLUMNS,
    amp_dtype_for,
    cosine_schedule,
    evaluate,
    fit,
    format_epoch,
    sagemaker_line,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    artifact: Path | None  # None for a run stopped before its outputs (``finish=False``)
    test: dict
    best_epoch: int
    history: list[dict]


def train(cfg: TrainConfig, *, resume: str | os.PathLike | None = None, progress: bool = True,
          on_epoch: Callable[[dict], None] | None = None, finish: bool = True, keep_checkpoints: bool = True) -> RunResult:
    """Run one training end to end. ``on_epoch(row)`` sees each epoch's metrics (tuning reports and
    prunes through it). ``finish=False`` stops after the epochs: no test evaluation, plots or
    artifact (what a tuning trial needs); ``keep_checkpoints=False`` removes the checkpoints when
    the run ends, however it ends."""
    if resume:
        check_resumable(Path(resume), cfg)
    else:
        scan(cfg.data)  # a missing or misshapen data set fails before any folder is made
    run_dir = Path(resume) if resume else new_run_dir(cfg)
    try:
        return _observed(run_dir, cfg, resume=bool(resume), progress=progress, on_epoch=on_epoch, finish=finish)
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing behind.
        if not resume and not (run_dir / "checkpoints" / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        elif (run_dir / "profile").is_dir():
            log.info("profile data kept in %s; `dogbreed report %s` reports what was collected", run_dir / "profile", run_dir)
        raise
    finally:
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def new_run_dir(cfg: TrainConfig) -> Path:
    base = make_folder(cfg.out, "--out")
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


def _observed(run_dir: Path, cfg: TrainConfig, *, resume: bool, progress: bool, on_epoch, finish: bool) -> RunResult:
    """The run inside its profiler, when it has one (tuning trials, ``finish=False``, run unobserved)."""
    device = resolve_device(cfg.device)
    if cfg.rules and not cfg.profile:
        log.warning("--rules %s has no effect with --no-profile", cfg.rules)
    if not (cfg.profile and finish):
        return _run(run_dir, cfg, device, NO_HOOKS, resume=resume, progress=progress, on_epoch=on_epoch, finish=finish)
    monitor = _open_monitor(run_dir, cfg, device, resume=resume)
    status = "failed"
    try:
        result = _run(run_dir, cfg, device, monitor, resume=resume, progress=progress, on_epoch=on_epoch, finish=finish)
        status = "completed"
        return result
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        monitor.close(status)
        if status == "completed":
            _report(run_dir)


def _open_monitor(run_dir: Path, cfg: TrainConfig, device: torch.device, *, resume: bool):
    from dogbreed.monitor import Monitor  # the profiler's stack (psutil, rules, tensorboard) only when profiling

    meta = {"config": {k: getattr(cfg, k) for k in ("backbone", "train_layers", "epochs", "batch_size", "lr",
                                                   "image_size", "amp", "workers", "seed")},
            "path": "cached embeddings" if cfg.uses_feature_cache else "images"}
    return Monitor(run_dir, device=device, meta=meta, interval_ms=cfg.profile_interval_ms,
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


def _run(run_dir: Path, cfg: TrainConfig, device: torch.device, hooks: NoHooks, *, resume: bool, progress: bool,
         on_epoch, finish: bool) -> RunResult:
    started = time.perf_counter()
    amp_dtype = amp_dtype_for(device, cfg.amp)
    data = load_for_training(cfg.data)
    labels = data.labels
    torch.manual_seed(cfg.seed)
    model, weights_source = build_model(cfg.backbone, len(labels.names), pretrained=cfg.pretrained, weights=cfg.weights)
    preset = eval_preset(cfg.backbone, cfg.image_size)
    frozen = freeze(model, cfg.backbone, cfg.train_layers)

    # Paths saved absolute: `--resume` works from any folder.
    paths = {k: str(Path(v).resolve()) for k in ("data", "out", "weights", "cache_dir", "rules") if (v := getattr(cfg, k))}
    cfgmod.save_yaml(dataclasses.replace(cfg, **paths), run_dir / "config.yaml")
    labels.write(run_dir / "labels.json")
    hooks.describe_data(labels.names, data.counts()["train"])
    log.info("run %s: %s (%s), %d classes, %d/%d/%d images, train_layers=%s, device=%s, amp=%s",
             run_dir, cfg.backbone, weights_source, len(labels.names), *(len(data.splits[s]) for s in SPLITS),
             cfg.train_layers, device, {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "off"))

    batches = build_batches(cfg, model, frozen, preset, data, device, amp_dtype, progress=progress, hooks=hooks)
    for phase, loader in (("train", batches.train), ("eval", batches.valid), ("test", batches.test)):
        hooks.describe_loader(phase, loader)
    params = [p for p in batches.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * len(batches.train), cfg.scheduler)
    checkpoints = Checkpoints(run_dir / "checkpoints", cfg.to_dict())
    shuffle = getattr(batches.train, "generator", None)
    if resume and checkpoints.last.exists():
        state = checkpoints.restore(batches.trainable, optimizer, scheduler, shuffle)
    else:
        if resume:  # killed before its first epoch ended (while embedding, say): start over, same config
            log.info("resuming %s: it has no finished epoch, so it trains from epoch 1 with its saved config", run_dir)
        state = FitState()
    hooks.watch(batches.trainable, prefix=batches.watched, start_step=state.epoch * len(batches.train))

    def report(row: dict) -> None:
        log.info(format_epoch(row, cfg.epochs))
        log.info(sagemaker_line(row))
        write_metrics(state.history, run_dir / "metrics.csv")
        if on_epoch:
            on_epoch(row)

    try:
        state = fit(batches.trainable, batches.train, batches.valid, epochs=cfg.epochs, optimizer=optimizer,
                    scheduler=scheduler, device=device, amp_dtype=amp_dtype, label_smoothing=cfg.label_smoothing,
                    set_train=batches.set_train, patience=cfg.patience, checkpoints=checkpoints, state=state,
                    on_epoch=report, progress=progress, hooks=hooks)
    finally:
        batches.close()
    if not finish:
        return RunResult(run_dir, None, {}, state.best_epoch, state.history)
    checkpoints.load_best(batches.trainable)
    return _finish(run_dir, cfg, model, batches, labels, preset, state, weights_source, device, amp_dtype, hooks,
                   seconds=time.perf_counter() - started)


def _finish(run_dir: Path, cfg: TrainConfig, model, batches: Batches, labels: Labels, preset: EvalPreset,
            state: FitState, weights_source: str, device, amp_dtype, hooks: NoHooks, *, seconds: float) -> RunResult:
    """The best epoch on the test split, the run's tables and plots, and the artifact."""
    test = evaluate(batches.trainable, batches.test, device=device, amp_dtype=amp_dtype, keep_predictions=True,
                    hooks=hooks, phase="test")
    test_metrics = {"test_loss": test.loss, "test_accuracy": test.accuracy, "test_top5": test.top5, "test_n": test.n}
    log.info("test (best epoch %d): loss %.4f  accuracy %.4f  top5 %.4f  (%d images)",
             state.best_epoch, test.loss, test.accuracy, test.top5, test.n)
    log.info(" ".join(f"{k}={v:.6g};" for k, v in test_metrics.items() if k != "test_n"))

    per_class = write_per_class(test.targets, test.predictions, labels, run_dir / "per_class.csv")
    hooks.note({"event": "per_class", "split": "test", "names": labels.names, "n": [r["n"] for r in per_class],
                "correct": [r["correct"] for r in per_class]})
    plot_curves(state.history, run_dir / "curves.png", state.best_epoch)
    matrix = confusion_matrix(test.targets.numpy(), test.predictions.numpy(), len(labels.names))
    plot_confusion(matrix, labels.display, run_dir / "confusion.png")

    model = model.cpu()  # the head trained in place inside it, on the cached path too
    results = {
        **test_metrics,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "epochs_run": state.epoch,
        "seconds": round(seconds, 2),
        "weights": weights_source,
        "feature_cache": batches.cache_stats,
        "per_class_accuracy": {r["name"]: r["accuracy"] for r in per_class},
    }
    meta = model_meta(cfg.backbone, labels, preset, threshold=cfg.threshold, weights=weights_source,
                      config=cfg.to_dict(), metrics=test_metrics)
    artifact = write_artifact(run_dir / "model.tar.gz", model, labels, meta)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
    if sm_dir := cfgmod.sagemaker_model_dir():
        write_model_dir(sm_dir, model, labels, meta)
        shutil.copy(run_dir / "metrics.csv", Path(sm_dir) / "metrics.csv")
        log.info("SageMaker model dir written: %s", sm_dir)
    return RunResult(run_dir, artifact, test_metrics, state.best_epoch, state.history)


def write_metrics(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history)


def write_per_class(targets: torch.Tensor, preds: torch.Tensor, labels: Labels, path: Path) -> list[dict]:
    rows = []
    for i, (name, display) in enumerate(zip(labels.names, labels.display)):
        mask = targets == i
        n = int(mask.sum())
        correct = int((preds[mask] == i).sum())
        rows.append({"index": i, "name": name, "display": display, "n": n, "correct": correct,
                     "accuracy": round(correct / n, 6) if n else None})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows
