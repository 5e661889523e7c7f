"""``dogbreed evaluate``: how an artifact does on a labelled split, through the same inference path
that answers requests, and how well its "not a dog" score tells those images from others.

    OUT/evaluation.json   accuracy, top-5, NLL, ECE, the selective-prediction curve, the heatmaps'
                          focus (``saliency.focus``: their mass on the subject), the top losses and
                          the most confused pairs; with --ood:
                          AUROC and FPR at 95% TPR of the score, and the verdicts the others got
    OUT/selective.png     accuracy against the share of images answered (most confident first)
    OUT/reliability.png   accuracy against confidence, with each bin's share of images
    OUT/top_losses.png    the worst images, and confused_pairs.png one of each most confused pair, over
                          the heatmaps of the breed the model saw
    OUT/scores.png        with --ood: the score of known-breed images against the others
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dogbreed import calibration, interpret, plots, registry, rejection, remote, saliency, stats, tracking
from dogbreed.artifact import load_artifact
from dogbreed.data.layout import IMAGE_EXTS, SPLITS, model_index, scan
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text
from dogbreed.runtime import explain as heatmaps
from dogbreed.runtime import pipeline, scores
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import Options, RequestError

log = logging.getLogger(__name__)
BATCH = 32


def run(model_path: str, data: str, *, ood: str | None = None, split: str = "test", out: str = "evaluation",
        options: Options | None = None, progress: bool = True, tracking_uri: str | None = None) -> dict:
    """``tracking_uri``: an MLflow store to log the figures and files to (``tracking.log_to_model_run``:
    the model's own run where the artifact names one there)."""
    if split not in SPLITS:
        raise DogbreedError(f"--split {split!r} is not a split; choose one of: {', '.join(SPLITS)}")
    remote.check_writable(out)  # an s3:// --out: now, not after the work
    tracking.Tracker.optional(tracking_uri)  # a missing MLflow: now
    ood_files = _ood_files(ood, progress) if ood else None  # a bad --ood is one line before anything loads
    layout = scan(remote.staged(data, IMAGE_EXTS, progress=progress).root)
    model = load_artifact(registry.model_file(model_path, progress=progress), name=model_path)
    opts = options or Options.of(model)
    if "calibration" not in model.meta:
        log.warning("%s has no calibration (an older artifact, or trained with --no-calibrate): its probabilities are "
                    "the softmax as trained", model_path)
    index = model_index(layout, model.labels, data)
    samples = [(path, index[layout.labels.names[label]]) for path, label in layout.splits[split]]
    known = _pass(model, [p for p, _ in samples], progress, f"evaluating {split}", regions=saliency.Regions.of(layout.root))
    targets = torch.tensor([y for (p, y) in samples if p in known["kept"]])
    probs = pipeline.probabilities(model, known["logits"])
    # an s3:// --out: written in a temporary folder, uploaded once whole (as `train --out s3://` uploads a run)
    with remote.written_folder(out, "--out") as folder:
        doc: dict = {"model": str(model_path), "data": str(data), "split": split, "n": int(targets.numel()),
                     "unreadable": known["unreadable"], **_quality(probs, targets)}
        doc["selective"] = _selective(probs, targets)
        doc["saliency_focus"] = saliency.focus(known["focus"], known["region"])
        files = [p for p, _ in samples if p in known["kept"]]  # in the order of the logits
        why = {"confused_pairs": interpret.confused_pairs(targets, probs.argmax(1), model.display,
                                                          losses=interpret.losses_of(known["logits"], targets,
                                                                                     model.temperature), files=files),
               "top_losses": interpret.top_losses(known["logits"], targets, torch.arange(len(files)), files,
                                                  model.display, model.temperature)}
        doc.update(why)
        saliency.galleries(model, why, [], layout.root, folder, split)
        plots.plot_reliability(known["logits"], targets, model.temperature, folder / "reliability.png")
        answered = (probs.max(dim=1).values >= opts.threshold).double().mean().item()
        plots.plot_selective(doc["selective"], opts.threshold, answered, folder / "selective.png")
        in_scores = _scores(model, known)
        doc["verdicts"] = _verdicts(model, probs, in_scores, opts)
        if ood_files is not None:
            other = _pass(model, ood_files, progress, "evaluating --ood",
                          hint=f"--ood {ood} needs photos of anything but the model's breeds, in a format they open in "
                               f"(JPEG, PNG, WebP, ...); the warnings above say what is wrong with each")
            other_scores = _scores(model, other)
            name = model.rejection["score"] if in_scores is not None and model.rejection else "msp"
            if in_scores is None:
                log.warning("%s has no \"not a dog\" score: the top probability stands in for one", model_path)
                in_scores = scores.msp(known["logits"], model.temperature)
                other_scores = scores.msp(other["logits"], model.temperature)
            doc["ood"] = {"folder": str(ood), "score": name, "unreadable": other["unreadable"],
                          **rejection.describe(in_scores, other_scores),
                          "verdicts": _verdicts(model, pipeline.probabilities(model, other["logits"]),
                                                other_scores if model.rejection else None, opts)}
            plots.plot_scores(in_scores, other_scores, name, folder / "scores.png")
        atomic_write_text(folder / "evaluation.json", json.dumps(doc, indent=1))
        if tracking_uri:
            _track(tracking_uri, model, str(model_path), doc, folder)
    return doc


def _track(uri: str, model: LoadedModel, model_path: str, doc: dict, folder: Path) -> None:
    """The figures as ``evaluate.<split>.<figure>`` and the files under ``evaluation/<split>/``, in
    the model's MLflow run (``tracking.log_to_model_run``)."""
    figures = {k: doc.get(k) for k in ("accuracy", "top5", "nll", "ece", "n")}
    figures.update({f"ood.{k}": (doc.get("ood") or {}).get(k) for k in ("auroc", "fpr_at_95_tpr")})
    figures.update({f"saliency_focus.{k}": (doc.get("saliency_focus") or {}).get(k) for k in ("mean", "lift")})
    run_id = registry.run_of(model_path, uri) if registry.is_model_uri(model_path) else None
    tracking.log_to_model_run(uri, model.meta, model_path, "evaluate",
                              {f"evaluate.{doc['split']}.{k}": v for k, v in figures.items()},
                              sorted(p for p in folder.iterdir() if p.is_file()), f"evaluation/{doc['split']}",
                              run_id=run_id)


def _ood_files(folder: str, progress: bool) -> list[str]:
    wanted = "pass a folder of photos of anything but the model's breeds"
    if remote.is_s3(folder):  # staged as a data set is: fetched once, then only what changed
        root = remote.stage(folder, IMAGE_EXTS, progress=progress, empty=wanted).root
    else:
        root = Path(folder)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DogbreedError(f"--ood {folder} {what}; {wanted}")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DogbreedError(f"--ood {folder} holds no images; {wanted}")
    return files


def _pass(model: LoadedModel, paths: list[str], progress: bool, desc: str,
          hint: str = "check the data set with `dogbreed data check`", regions: saliency.Regions | None = None) -> dict:
    """Every image through the inference path: logits and embeddings of those that decode; none
    decoding is one line ending with ``hint``, what to do about these images. With ``regions``,
    from the same passes, each image's share of its top breed's heatmap on its subject, and the
    subject's area (none where the network has no maps)."""
    logits, features, kept, unreadable, looked = [], [], set(), 0, []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(paths), BATCH):
        chunk, pixels, decoded = paths[start : start + BATCH], [], []
        for path in chunk:
            try:
                pixels.append(pipeline.decode(model, Path(path).read_bytes(), name=path))
                decoded.append(path)
                kept.add(path)
            except RequestError as exc:
                unreadable += 1
                log.warning("skipping unreadable image %s", exc)
        if pixels:
            z, f, maps = pipeline.forward_maps(model, pixels) if regions else (*pipeline.forward(model, pixels), None)
            if maps is not None:
                for i, k in enumerate(z.argmax(1).tolist()):
                    box = regions.box(model, decoded[i])
                    looked.append((heatmaps.box_share(heatmaps.normalized(maps[i, k]), box), saliency.area(box)))
            logits.append(z)
            features.append(f)
        bar.update(len(chunk))
    bar.close()
    if not logits:
        raise DogbreedError(f"no image could be read ({unreadable} unreadable); {hint}")
    return {"logits": torch.cat(logits), "features": None if features[0] is None else torch.cat(features), "kept": kept,
            "unreadable": unreadable, "focus": looked, "region": regions.name if regions else None}


def _scores(model: LoadedModel, passed: dict) -> torch.Tensor | None:
    return pipeline.ood_scores(model, passed["logits"], passed["features"])


def _quality(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    right = int((probs.argmax(dim=1) == targets).sum())
    return {
        "accuracy": round(right / targets.numel(), 6),
        "accuracy_ci95": [round(v, 6) for v in stats.wilson(right, targets.numel())],
        "top5": round((top5 == targets[:, None]).any(dim=1).double().mean().item(), 6),
        "nll": round(F.nll_loss(torch.log(probs.double().clamp_min(1e-12)), targets).item(), 6),
        "ece": round(calibration.ece(probs, targets), 6),
        "ece_ci95": [round(v, 6) for v in calibration.ece_interval(probs, targets)],
    }


def _selective(probs: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    confidence, predicted = probs.max(dim=1)
    return stats.selective_curve(confidence, predicted == targets)


def _verdicts(model: LoadedModel, probs: torch.Tensor, ood: torch.Tensor | None, opts: Options) -> dict:
    """The share of images given each verdict, as the server would answer them."""
    counts = {"breed": 0, "unsure": 0, "not_a_dog": 0}
    for i, row in enumerate(probs):
        counts[pipeline.answer(model, row, opts, None if ood is None else float(ood[i]))["verdict"]] += 1
    return {k: round(v / len(probs), 6) for k, v in counts.items()}
