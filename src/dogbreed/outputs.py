"""What a finished run leaves behind: the best epoch judged on the test split, its probabilities
calibrated, its "not a dog" threshold, why it errs, the plots, results.json and the artifact with
its model card.

    runs/<run>/results.json  per_class.csv  curves.png  confusion.png  reliability.png
              per_class.png  top_losses.png  confused_pairs.png  interpretation.json  model.tar.gz
              baseline/  (statistics.json, constraints.json, sketch.npz: also inside the artifact)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dogbreed import calibration, gates, interpret, model_card, rejection, saliency, selective, stats
from dogbreed import config as cfgmod
from dogbreed.artifact import model_meta, pack, write_meta, write_model_dir
from dogbreed.batches import Batches
from dogbreed.checkpoints import FitState
from dogbreed.config import TrainConfig
from dogbreed.context import RunContext
from dogbreed.data.layout import Labels, split_digest
from dogbreed.drift import baseline as drift
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text
from dogbreed.hooks import NoHooks
from dogbreed.model import imagenet_head
from dogbreed.plots import confusion_matrix, plot_confusion, plot_curves, plot_per_class, plot_reliability
from dogbreed.runtime.loading import load_model_dir
from dogbreed.runtime.network import get_head
from dogbreed.train import EvalResult, evaluate

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path | None  # None on a torchrun rank but 0: it embedded its share and wrote nothing
    artifact: Path | None  # None for a run stopped before its outputs (``finish=False``)
    test: dict
    best_epoch: int
    history: list[dict]
    uploaded: str | None = None  # the artifact's URL, with --out s3://...


@dataclass
class Judged:
    """The best epoch on each split a run's outputs need (valid and train only when asked for)."""

    test: EvalResult
    valid: EvalResult | None
    train: EvalResult | None


def judge(ctx: RunContext, batches: Batches, hooks: NoHooks, *, valid: bool, train: bool) -> Judged:
    """The evaluations ``finish`` writes from: test always, ``valid`` to calibrate or fit the "not a
    dog" threshold on, ``train`` for the Mahalanobis score's class means. Under DDP every rank runs
    these, each on its share, and every rank gets the whole split's results."""
    head = get_head(ctx.model, ctx.backbone)  # what every split's embeddings go into (the trained head)

    def judged(split: str, **kwargs) -> EvalResult:
        return evaluate(batches.trainable, getattr(batches, split), device=ctx.device, amp_dtype=ctx.amp_dtype,
                        keep_predictions=True, features_of=head, ranks=ctx.ranks, **kwargs)

    return Judged(judged("test", hooks=hooks, phase="test"), judged("valid") if valid else None,
                  judged("train") if train else None)  # train: one more pass over the images, on that path


def finish(run_dir: Path, cfg: TrainConfig, ctx: RunContext, judged: Judged, state: FitState, hooks: NoHooks, *,
           cache_stats: dict | None, seconds: float, tracked: dict | None = None) -> RunResult:
    """Write the run's outputs from ``judged`` (``judge``'s evaluations of the best epoch). ``tracked``:
    the run's MLflow run (``{"uri", "run_id"}``) where it is tracked, kept in model.json so that
    what judges the model later (``evaluate``, ``register``) finds its run."""
    data, weights_source = ctx.data, ctx.weights_source
    labels = data.labels
    test, valid, train = judged.test, judged.valid, judged.train
    test_metrics = {"test_loss": test.loss, "test_accuracy": test.accuracy, "test_top5": test.top5, "test_n": test.n}
    log.info("test (best epoch %d): loss %.4f  accuracy %.4f  top5 %.4f  (%d images)",
             state.best_epoch, test.loss, test.accuracy, test.top5, test.n)
    log.info(" ".join(f"{k}={v:.6g};" for k, v in test_metrics.items() if k != "test_n"))

    per_class = write_per_class(test.targets, test.predictions, labels, run_dir / "per_class.csv")
    hooks.note({"event": "per_class", "split": "test", "names": labels.names, "n": [r["n"] for r in per_class],
                "correct": [r["correct"] for r in per_class]})
    plot_curves(state.history, run_dir / "curves.png", state.best_epoch)
    plot_confusion(confusion_matrix(test.targets.numpy(), test.predictions.numpy(), len(labels.names)), labels.display,
                   run_dir / "confusion.png")

    calibrated = None
    if cfg.calibrate:  # the temperature is fitted on valid and judged on test
        calibrated = calibration.report(valid.logits, valid.targets, test.logits, test.targets)
        log.info(calibration.summary(calibrated))
        plot_reliability(test.logits, test.targets, calibrated["temperature"], run_dir / "reliability.png")
    temperature = calibrated["temperature"] if calibrated else 1.0
    # the answers' ECE as served (after the temperature), what `register --promote` weighs with accuracy
    test_metrics["test_ece"] = round(calibration.ece(torch.softmax(test.logits.double() / temperature, dim=1),
                                                     test.targets), 6)

    rejected, tensors, dogs = None, None, {}
    if cfg.reject != "none":
        imagenet = imagenet_head(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights) \
            if cfg.reject == "imagenet" else None
        rejected, tensors, dogs = rejection.fit(
            cfg.reject, cfg.reject_keep, temperature,
            train=(None, train.features, train.targets) if train else (None, None, None),
            valid=(valid.logits, valid.features, valid.targets), test=(test.logits, test.features, test.targets),
            classes=len(labels.names), imagenet_head=imagenet)
        log.info("not a dog: %s score under %.4g (keeps %.0f%% of valid; %.1f%% of test)", cfg.reject,
                 rejected["threshold"], 100 * cfg.reject_keep, 100 * rejected["test_kept"])

    unsure = choose_unsure(cfg, valid, test, temperature, dogs)

    test_files = [p for p, _ in data.splits["test"]]
    losses = interpret.losses_of(test.logits, test.targets, temperature)
    why = {"confused_pairs": interpret.confused_pairs(test.targets, test.predictions, labels.display, losses=losses,
                                                      files=[test_files[int(i)] for i in test.indices]),
           "top_losses": interpret.top_losses(test.logits, test.targets, test.indices, test_files, labels.display,
                                              temperature)}
    plot_per_class(per_class, run_dir / "per_class.png")

    accuracy_ci = stats.wilson(int((test.predictions == test.targets).sum()), test.targets.numel())
    results = {
        **test_metrics,
        "test_accuracy_ci95": [round(v, 6) for v in accuracy_ci],
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "epochs_run": state.epoch,
        "seconds": round(seconds, 2),
        "weights": weights_source,
        "feature_cache": cache_stats,
        "per_class_accuracy": {r["name"]: r["accuracy"] for r in per_class},
        "calibration": calibrated,
        "rejection": {k: v for k, v in rejected.items() if k != "quantiles"} if rejected else None,
        "unsure": {k: v for k, v in unsure.items() if k != "curve"},
        "most_confused": [{k: v for k, v in pair.items() if k != "example"} for pair in why["confused_pairs"][:3]],
    }
    extra = {}
    if calibrated:
        extra["calibration"] = {"temperature": calibrated["temperature"]}
    if rejected:
        extra["rejection"] = rejected
    meta = model_meta(cfg.backbone, labels, ctx.preset, threshold=unsure["threshold"], weights=weights_source,
                      config=cfg.to_dict(), metrics=test_metrics, unsure={k: v for k, v in unsure.items() if k != "test"},
                      data_digest={"test": split_digest(test_files, data.root), "test_n": len(test_files)},
                      **extra, **({"tracking": tracked} if tracked else {}))
    files = {"rejection": tensors, "card": model_card.render(meta, results, {s: len(v) for s, v in data.splits.items()},
                                                             str(data.root))}
    model = ctx.model.cpu()  # the head trained in place inside it, on the cached path too
    with tempfile.TemporaryDirectory(prefix="dogbreed-artifact-") as tmp:
        model_dir = write_model_dir(tmp, model, labels, meta, **files)
        served = load_model_dir(str(model_dir), "cpu", "eager", fused=True)  # the network as it answers
        results["saliency_focus"] = explain_run(saliency.network(model_dir, served), why, test_files, data.root, run_dir)
        # what `dogbreed monitor run` compares captured requests with, in the artifact and the run folder
        try:
            baseline = drift.at_run_end(model_dir, valid.logits, valid.features,
                                        [path for path, _ in data.splits["valid"]], valid.accuracy)
            baseline.write(model_dir / drift.FOLDER)
            baseline.write(run_dir / drift.FOLDER)
        except DogbreedError as exc:  # a model without a baseline still serves; `monitor baseline` can add one
            log.warning("no monitoring baseline: %s", exc)
        if checked := gates.at_run_end(model_dir, [path for path, _ in data.splits["valid"]], eager=served):
            meta.update(checked)  # bf16 where it passed: serve's auto times it with no export
            results["backends"] = checked["backends"]
            write_meta(model_dir, meta)
        artifact = pack(model_dir, run_dir / "model.tar.gz")
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1))
        if sm_dir := cfgmod.sagemaker_model_dir():
            shutil.copytree(model_dir, sm_dir, dirs_exist_ok=True)
            shutil.copy(run_dir / "metrics.csv", Path(sm_dir) / "metrics.csv")
            log.info("SageMaker model dir written: %s", sm_dir)
    return RunResult(run_dir, artifact, test_metrics, state.best_epoch, state.history)


def explain_run(model, why: dict, test_files: list[str], root, run_dir: Path) -> dict | None:
    """The galleries (top losses, confused pairs) over heatmaps, ``interpretation.json`` and the
    run's ``saliency_focus``, said in one line (a warning where it is low). A network without maps
    draws the galleries without them; the focus is then None."""
    focus = saliency.galleries(model, why, test_files, root, run_dir)
    if focus:
        (log.warning if focus["low"] else log.info)(saliency.summary(focus))
    atomic_write_text(run_dir / "interpretation.json", json.dumps({**why, "saliency_focus": focus}, indent=1))
    return focus


def choose_unsure(cfg: TrainConfig, valid: EvalResult | None, test: EvalResult, temperature: float,
                  dogs: dict[str, torch.Tensor]) -> dict:
    """The threshold under which answers say ``unsure``: ``--threshold`` as given, or chosen on the
    valid images the "not a dog" check lets through (``selective.choose``); with how the test
    split's known breeds are then answered (``test``), said in one line."""
    def top(split: EvalResult) -> tuple[torch.Tensor, torch.Tensor]:
        return calibration.top(torch.softmax(split.logits.double() / temperature, dim=1), split.targets)

    if cfg.threshold is None:
        confidence, correct = top(valid)
        dog = dogs.get("valid", torch.ones(len(confidence), dtype=torch.bool))
        unsure = selective.choose(confidence[dog], correct[dog], cfg.unsure_accuracy)
    else:
        unsure = {"threshold": cfg.threshold, "chosen": False}
    unsure["test"] = selective.answered(*top(test), unsure["threshold"], dogs.get("test"))
    how = (f"chosen on valid for {100 * cfg.unsure_accuracy:.0f}% right answers: answers "
           f"{100 * unsure['valid_answered']:.1f}% of its dogs" if unsure["chosen"] else "as given")
    accuracy = unsure["test"]["breed_accuracy"]
    log.info("unsure under a top-1 probability of %.3g (%s); known test breeds: %.1f%% answered a breed%s, %.1f%% "
             "unsure, %.1f%% not a dog", unsure["threshold"], how, 100 * unsure["test"]["breed"],
             "" if accuracy is None else f" ({100 * accuracy:.1f}% right)", 100 * unsure["test"]["unsure"],
             100 * unsure["test"]["not_a_dog"])
    if unsure["chosen"] and not unsure["valid_answered"]:
        log.warning("no threshold keeps %.0f%% of valid answers right: every answer will say unsure; lower "
                    "--unsure-accuracy or pass --threshold", 100 * cfg.unsure_accuracy)
    return unsure


def write_per_class(targets: torch.Tensor, preds: torch.Tensor, labels: Labels, path: Path) -> list[dict]:
    import csv

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
