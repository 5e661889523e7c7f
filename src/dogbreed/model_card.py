"""MODEL_CARD.md, in every artifact: what the model was trained on, how well it does (with
intervals), how its probabilities were calibrated, when it says "not a dog" and what that keeps,
what it is for and not for, and how to train it again."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(pair: list | None) -> str:
    return "" if not pair else f" (95% interval {100 * pair[0]:.1f}-{100 * pair[1]:.1f}%)"


def _unsure(threshold: float, unsure: dict) -> str:
    line = f"- \"Unsure\": answers whose top probability is under {threshold:.3g} say `unsure`"
    if unsure.get("chosen"):
        line += (f", the lowest threshold whose answers were right at least {_pct(unsure['accuracy'])} of the time on "
                 f"the valid images (it answered {_pct(unsure['valid_answered'])} of them)")
    test = unsure.get("test")
    if test:
        line += (f". On the test split's breeds: {_pct(test['breed'])} answered a breed ({_pct(test['breed_accuracy'])} "
                 f"of them right), {_pct(test['unsure'])} unsure, {_pct(test['not_a_dog'])} not a dog")
    return line + "."


def render(meta: dict, results: dict, counts: dict[str, int], data: str) -> str:
    cfg = meta.get("config", {})
    calibration = results.get("calibration") or {}
    rejection = meta.get("rejection") or {}
    lines = [
        f"# Model card: {meta['backbone']}, {meta['num_classes']} breeds",
        "",
        "## Data",
        "",
        f"- Data set: `{data}` (ImageFolder: train/valid/test/<breed>/*.jpg)",
        f"- Images: {counts.get('train', 0)} train, {counts.get('valid', 0)} valid, {counts.get('test', 0)} test",
        f"- Weights the backbone started from: {meta.get('weights', 'unknown')}",
        f"- Trained: `train_layers={cfg.get('train_layers')}`, {results.get('epochs_run')} epochs (best: "
        f"{results.get('best_epoch')}), batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, image size {meta['image_size']}",
        "",
        "## How well it does (test split)",
        "",
        f"- Accuracy: {_pct(results.get('test_accuracy'))}{_interval(results.get('test_accuracy_ci95'))}; "
        f"top-5: {_pct(results.get('test_top5'))}; loss {results.get('test_loss', float('nan')):.4f}",
    ]
    if calibration:
        lines += [
            f"- Calibration: temperature {calibration['temperature']:.3g}, fitted on valid. Top-label ECE "
            f"({calibration['ece_bins']} bins) {_pct(calibration['test_ece_before'])} before, "
            f"{_pct(calibration['test_ece_after'])} after{_interval(calibration['test_ece_after_ci95'])}; NLL "
            f"{calibration['test_nll_before']:.4f} -> {calibration['test_nll_after']:.4f}",
        ]
    else:
        lines += ["- Calibration: none (trained with --no-calibrate); probabilities are the softmax as trained"]
    if rejection:
        lines += [
            f"- \"Not a dog\": the `{rejection['score']}` score below {rejection['threshold']:.4g} answers "
            f"`not_a_dog`; the threshold keeps {_pct(rejection['keep'])} of the valid images (on test: "
            f"{_pct(rejection.get('test_kept'))}).",
        ]
    lines.append(_unsure(meta["threshold"], results.get("unsure") or {}))
    lines += [
        "",
        "## Intended use",
        "",
        "Naming the breed of a dog in a photo, among the breeds listed in labels.json, with a probability that means",
        "what it says and a verdict (`breed`, `unsure`, `not_a_dog`) that a caller can act on: ask for another photo",
        "when it is not `breed`.",
        "",
        "## Limitations",
        "",
        "- It knows only these breeds. A mixed breed, or one it never saw, gets the nearest known breed unless the",
        "  score flags it; the threshold lets through some such images by design (see the keep share above).",
        "- The test split is small: the intervals above are wide, and per-breed accuracies rest on a few images each.",
        "- Calibration and the threshold hold for photos like the training ones; other cameras, crops or lighting",
        "  shift them.",
        "",
        "## Reproduce",
        "",
        "```",
        "dogbreed train --config config.yaml   # the run's own config.yaml, beside this artifact in its run folder",
        "```",
        "",
        f"Written by dogbreed {meta.get('dogbreed_version')}.",
        "",
    ]
    return "\n".join(lines)
