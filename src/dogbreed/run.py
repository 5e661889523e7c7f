"""A training run from config to artifact: data -> model -> fit -> run dir -> model.tar.gz.

    runs/<run>/config.yaml  metrics.csv  labels.json  results.json  per_class.csv
              checkpoints/{last,best}.pt  curves.png  confusion.png  model.tar.gz
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from dogbreed import config as cfgmod
from dogbreed.artifact import model_meta, write_artifact, write_model_dir
from dogbreed.config import PROFILE_KEYS, TrainConfig
from dogbreed.data import layout as layout_mod
from dogbreed.data.loaders import ImageDataset, TensorBatches, image_loader, shutdown_workers
from dogbreed.errors import DogbreedError
from dogbreed.features import FeatureCache, feature_extractor
from dogbreed.files import atomic_write_text
from dogbreed.model import build_model, eval_preset, freeze, train_mode
from dogbreed.monitor import NULL_MONITOR, NullMonitor, open_monitor
from dogbreed.plots import confusion_matrix, plot_confusion, plot_curves
from dogbreed.runtime.inference import load_failure
from dogbreed.runtime.network import ARCHS, get_head
from dogbreed.runtime.presets import TrainPreset
from dogbreed.train import (
    METRIC_COLUMNS,
    FitState,
    amp_dtype_for,
    cosine_schedule,
    evaluate,
    fit,
    format_epoch,
    resolve_device,
    sagemaker_line,
)

log = logging.getLogger(__name__)

# What a resumed run may change; everything else must match the run it continues.
RESUME_OVERRIDABLE = {"epochs", "patience", "workers", "device", "data", "cache_dir", *PROFILE_KEYS}


@dataclass
class RunResult:
    run_dir: Path
    artifact: Path | None  # None for a run stopped before its outputs (``finish=False``)
    test: dict
    best_epoch: int
    history: list[dict]


def new_run_dir(cfg: TrainConfig) -> Path:
    base = Path(cfg.out)
    name = cfg.name or f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.backbone}"
    base.mkdir(parents=True, exist_ok=True)
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


def load_layout(data: str | None) -> layout_mod.Layout:
    """The data set after the same checks as ``dogbreed data check`` (headers only, for speed).
    Unreadable images are skipped with a warning naming each file; layout errors stop the run."""
    if not data:
        raise DogbreedError("no data set given; pass --data DIR (expected DIR/{train,valid,test}/<class>/*.jpg)")
    report = layout_mod.check(data, full=False, progress=False)
    if report.layout is None:
        raise DogbreedError(report.errors[0])
    for warning in report.warnings:
        log.warning(warning)
    for path, reason in report.bad_images:
        log.warning("skipping unreadable image %s", reason)
    return layout_mod.drop_bad(report.layout, report.bad_images)


def write_metrics(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in history)


def write_per_class(targets: torch.Tensor, preds: torch.Tensor, labels: layout_mod.Labels, path: Path) -> list[dict]:
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


def train(cfg: TrainConfig, *, resume: str | os.PathLike | None = None, progress: bool = True,
          on_epoch=None, finish: bool = True, keep_checkpoints: bool = True) -> RunResult:
    """Run one training end to end. ``on_epoch(row)`` sees each epoch's metrics (tuning reports and
    prunes through it). ``finish=False`` stops after the epochs: no test evaluation, plots or
    artifact (what a tuning trial needs); ``keep_checkpoints=False`` removes the checkpoints when
    the run ends, however it ends."""
    if resume:
        _check_resumable(Path(resume), cfg)
    run_dir = Path(resume) if resume else new_run_dir(cfg)
    try:
        return _train_in(run_dir, cfg, resume=bool(resume), progress=progress, on_epoch=on_epoch, finish=finish)
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


def _check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse, before touching the run, a resume with nothing to do or no data to do it with."""
    results = run_dir / "results.json"
    if results.is_file():
        done = json.loads(results.read_text(encoding="utf-8")).get("epochs_run", 0)
        if cfg.epochs <= done:
            raise DogbreedError(f"{run_dir} has finished ({done} epochs; its artifact is {run_dir / 'model.tar.gz'}); "
                                f"to train it further, pass --epochs N with N over {done}")
    if not cfg.data:
        raise DogbreedError("no data set given; pass --data DIR")
    layout_mod.scan(cfg.data)  # a missing data set fails here, not after the run's status was changed


def _train_in(run_dir: Path, cfg: TrainConfig, *, resume: bool, progress: bool, on_epoch, finish: bool) -> RunResult:
    """The run inside its monitor (tuning trials, ``finish=False``, run unobserved)."""
    device = resolve_device(cfg.device)
    if cfg.rules and not cfg.profile:
        log.warning("--rules %s has no effect with --no-profile", cfg.rules)
    if not (cfg.profile and finish):
        return _run(run_dir, cfg, device, NULL_MONITOR, resume=resume, progress=progress, on_epoch=on_epoch, finish=finish)
    monitor = open_monitor(run_dir, cfg, device, resume=resume)
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


def _run(run_dir: Path, cfg: TrainConfig, device: torch.device, monitor: NullMonitor, *, resume: bool, progress: bool,
         on_epoch, finish: bool) -> RunResult:
    started = time.perf_counter()
    amp_dtype = amp_dtype_for(device, cfg.amp)
    data = load_layout(cfg.data)
    labels = data.labels
    torch.manual_seed(cfg.seed)
    model, weights_source = build_model(cfg.backbone, len(labels.names), pretrained=cfg.pretrained, weights=cfg.weights)
    preset = eval_preset(cfg.backbone, cfg.image_size)
    frozen = freeze(model, cfg.backbone, cfg.train_layers)

    # Paths saved absolute: `--resume` works from any folder.
    paths = {k: str(Path(v).resolve()) for k in ("data", "weights", "cache_dir", "rules") if (v := getattr(cfg, k))}
    cfgmod.save_yaml(dataclasses.replace(cfg, **paths), run_dir / "config.yaml")
    labels.write(run_dir / "labels.json")
    monitor.describe_data(labels.names, data.counts()["train"])
    log.info("run %s: %s (%s), %d classes, %d/%d/%d images, train_layers=%s, device=%s, amp=%s",
             run_dir, cfg.backbone, weights_source, len(labels.names), *(len(data.splits[s]) for s in layout_mod.SPLITS),
             cfg.train_layers, device, {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "off"))

    if cfg.uses_feature_cache:
        trainable, set_train, batches, cache_stats = _cached_path(cfg, model, preset, data, device, amp_dtype, progress,
                                                                  monitor)
        watched = ARCHS[cfg.backbone].head + "."  # the head's own names inside the network
    else:
        trainable, set_train, batches = _image_path(cfg, model, frozen, preset, data, device)
        cache_stats, watched = None, ""
    train_batches, val_batches, test_batches = batches
    for phase, loader in zip(("train", "eval", "test"), batches):
        monitor.describe_loader(phase, loader)

    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * len(train_batches), cfg.scheduler)
    state = _restore(run_dir, trainable, optimizer, scheduler, train_batches) if resume else FitState()
    monitor.watch(trainable, prefix=watched, start_step=state.epoch * len(train_batches))

    def report(row: dict) -> None:
        log.info(format_epoch(row, cfg.epochs))
        log.info(sagemaker_line(row))
        write_metrics(state.history, run_dir / "metrics.csv")
        if on_epoch:
            on_epoch(row)

    try:
        state = fit(
            trainable, train_batches, val_batches, epochs=cfg.epochs, optimizer=optimizer, scheduler=scheduler,
            device=device, amp_dtype=amp_dtype, label_smoothing=cfg.label_smoothing, set_train=set_train,
            patience=cfg.patience, checkpoint_dir=run_dir / "checkpoints", checkpoint_extra={"config": cfg.to_dict()},
            state=state, on_epoch=report, progress=progress, monitor=monitor,
        )
    finally:
        for loader in (train_batches, val_batches):
            shutdown_workers(loader)
    if not finish:
        return RunResult(run_dir, None, {}, state.best_epoch, state.history)

    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location=device, weights_only=True)
    trainable.load_state_dict(best["model"])
    test = evaluate(trainable, test_batches, device=device, amp_dtype=amp_dtype, keep_predictions=True, monitor=monitor,
                    phase="test")
    test_metrics = {"test_loss": test.loss, "test_accuracy": test.accuracy, "test_top5": test.top5, "test_n": test.n}
    log.info("test (best epoch %d): loss %.4f  accuracy %.4f  top5 %.4f  (%d images)",
             state.best_epoch, test.loss, test.accuracy, test.top5, test.n)
    log.info(" ".join(f"{k}={v:.6g};" for k, v in test_metrics.items() if k != "test_n"))

    per_class = write_per_class(test.targets, test.predictions, labels, run_dir / "per_class.csv")
    monitor.note({"event": "per_class", "split": "test", "names": labels.names, "n": [r["n"] for r in per_class],
                  "correct": [r["correct"] for r in per_class]})
    plot_curves(state.history, run_dir / "curves.png", state.best_epoch)
    matrix = confusion_matrix(test.targets.numpy(), test.predictions.numpy(), len(labels.names))
    plot_confusion(matrix, labels.display, run_dir / "confusion.png")

    model = model.cpu()
    results = {
        **test_metrics,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "epochs_run": state.epoch,
        "seconds": round(time.perf_counter() - started, 2),
        "weights": weights_source,
        "feature_cache": cache_stats,
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


# Settings that change the embeddings themselves; a search over any of them cannot share one cache.
EMBEDDING_KEYS = {"backbone", "pretrained", "weights", "train_layers", "image_size", "aug_views", "feature_cache", "amp"}


def warm_cache(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Compute (or find) the run's cached embeddings without training: what tuning does once, with
    every core, before its workers start. Returns the cache statistics."""
    device = resolve_device(cfg.device)
    data = load_layout(cfg.data)
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg.backbone, len(data.labels.names), pretrained=cfg.pretrained, weights=cfg.weights)
    preset = eval_preset(cfg.backbone, cfg.image_size)
    return _cached_path(cfg, model, preset, data, device, amp_dtype_for(device, cfg.amp), progress)[3]


def _cached_path(cfg, model, preset, data, device, amp_dtype, progress, monitor=NULL_MONITOR):
    """Frozen backbone: embed every image once (and ``aug_views`` augmented views of the training
    images), then train the head alone on those embeddings."""
    cache = FeatureCache(cfg.cache_dir, feature_extractor(model, cfg.backbone), device=device, amp_dtype=amp_dtype,
                         batch_size=max(cfg.batch_size, 64), workers=cfg.workers, progress=progress, monitor=monitor)
    train_preset = TrainPreset.matching(preset)
    eval_id = repr(preset)
    if cfg.aug_views:
        views = [cache.get(data.splits["train"], train_preset, train_preset.describe(), view=v, desc=f"embedding train view {v + 1}/{cfg.aug_views}")
                 for v in range(cfg.aug_views)]
    else:
        views = [cache.get(data.splits["train"], preset, eval_id, view=None, desc="embedding train")]
    val = cache.get(data.splits["valid"], preset, eval_id, view=None, desc="embedding valid")
    test = cache.get(data.splits["test"], preset, eval_id, view=None, desc="embedding test")
    stats = cache.stats()
    log.info("embedding cache %s: %d hit(s), %d computed%s", cache.root, cache.hits, cache.misses,
             f" ({stats['images_embedded']} images, {stats['images_per_second']} img/s)" if cache.misses else "")

    ok = torch.stack([v.ok for v in views]).all(dim=0)  # an unreadable image fails in every view
    # The embeddings (tens of MB for dogImages) live on the training device for the whole run.
    train_x = torch.stack([v.features[ok] for v in views]).to(device)
    batches = (
        TensorBatches(train_x, views[0].labels[ok].to(device), cfg.batch_size, shuffle=True, seed=cfg.seed),
        TensorBatches(val.features[val.ok].to(device), val.labels[val.ok].to(device), 1024, shuffle=False),
        TensorBatches(test.features[test.ok].to(device), test.labels[test.ok].to(device), 1024, shuffle=False),
    )
    head = get_head(model, cfg.backbone).to(device)
    return head, head.train, batches, stats


def _image_path(cfg, model, frozen, preset, data, device):
    """Some layers unfrozen (or the cache turned off): every epoch runs the network on images."""
    model.to(device, memory_format=torch.channels_last)
    train_preset = TrainPreset.matching(preset) if cfg.aug_views else preset

    def loader(split, transform, shuffle):
        size = cfg.batch_size if shuffle else max(cfg.batch_size, 64)
        dataset = ImageDataset(data.splits[split], transform, min_side=getattr(transform, "resize_size", None))
        return image_loader(dataset, size, shuffle=shuffle, workers=cfg.workers, device=device, seed=cfg.seed,
                            persistent=split != "test")  # the test split is read once

    batches = (loader("train", train_preset, True), loader("valid", preset, False), loader("test", preset, False))
    return model, (lambda: train_mode(model, frozen)), batches


def _restore(run_dir: Path, trainable, optimizer, scheduler, train_batches) -> FitState:
    path = run_dir / "checkpoints" / "last.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        trainable.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # The schedule's length follows --epochs, which a resume may change: set the lr for this step.
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        if ckpt.get("shuffle") is not None and getattr(train_batches, "generator", None) is not None:
            train_batches.generator.set_state(ckpt["shuffle"])
        state = FitState(**ckpt["state"])
    except FileNotFoundError:
        raise DogbreedError(f"{run_dir} has no checkpoint to resume from (checkpoints/last.pt)") from None
    except Exception as exc:
        raise DogbreedError(f"checkpoint {path} is corrupt or does not match this run ({load_failure(exc)})") from None
    log.info("resuming %s after epoch %d", run_dir, state.epoch)
    return state


def resume_config(run_dir: str | os.PathLike, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir``, with only the settings a resume may change."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DogbreedError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `dogbreed train` created")
    fixed = set(overrides) - RESUME_OVERRIDABLE
    if fixed:
        raise DogbreedError(
            f"--resume continues {run_dir} with its saved config; {', '.join(sorted(fixed))} cannot change "
            f"(only {', '.join(sorted(RESUME_OVERRIDABLE))} can)"
        )
    return cfgmod.resolve(run_dir / "config.yaml", overrides)
