"""``dogbreed demo``: the whole workflow offline on synthetic data, in about a minute and a half on
2 CPU cores, most of it the training from scratch: data, a profiled training, tuning, the exports
with their accuracy gate, and predictions on the fastest backend that passed it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dogbreed import config as cfgmod
from dogbreed.artifact import extracted, load_artifact
from dogbreed.data.synth import synth
from dogbreed.export import export
from dogbreed.predict import expand, format_answer, predict_files
from dogbreed.run import train
from dogbreed.runtime.pipeline import Options
from dogbreed.tune.options import TuneOptions
from dogbreed.tune.tuner import tune

log = logging.getLogger(__name__)

# No pretrained weights offline, so the demo trains a small network from scratch on small images.
DEMO_RECIPE = {
    "backbone": "resnet18",
    "pretrained": False,
    "train_layers": "all",
    "image_size": 112,
    "epochs": 6,
    "batch_size": 32,
    "lr": 0.002,
}
DEMO_DATA = {"classes": 10, "per_class": 40, "size": 128, "seed": 0, "unseen": 2}
DEMO_TUNE = {"trials": 6, "parallel": 2}


def run_demo(out: str | Path = "demo", *, progress: bool = True, show: int = 3) -> Path:
    out = Path(out)
    data = out / "data"
    if not (data / "train").is_dir():
        log.info("1/5 data: synthesizing %d classes x %d images in %s", DEMO_DATA["classes"], DEMO_DATA["per_class"], data)
        synth(data, progress=progress, **DEMO_DATA)
    else:
        log.info("1/5 data: reusing %s", data)

    log.info("2/5 train (profiled: system, steps, debugger tensors, rules): %s",
             ", ".join(f"{k}={v}" for k, v in DEMO_RECIPE.items()))
    cfg = cfgmod.resolve(overrides={**DEMO_RECIPE, "data": str(data), "out": str(out / "runs")})
    result = train(cfg, progress=progress)

    # The network just trained stands in for ImageNet weights: its backbone is frozen and the tuning
    # trials train heads on its cached embeddings, as they would on a pretrained resnet50.
    backbone = out / "backbone.pth"
    with extracted(result.artifact) as model_dir:
        shutil.copyfile(model_dir / "model.pth", backbone)
    log.info("\n3/5 tune: %d trials, %d workers, head only on cached embeddings of the trained backbone", *DEMO_TUNE.values())
    base = cfgmod.resolve(overrides={**DEMO_RECIPE, "train_layers": "head", "weights": str(backbone),
                                     "data": str(data), "out": str(out / "runs")})
    study = f"demo-{result.run_dir.name}"
    tuned = tune(base, TuneOptions(study=study, **DEMO_TUNE), progress=progress)

    log.info("\n4/5 export: TorchScript, ONNX and int8, each checked against fp32 on the validation images")
    exported = export(tuned.artifact, "all", data=data, progress=progress)
    loaded = load_artifact(exported, backend="auto", budget_s=4)
    log.info("  %s: %s", exported.name, loaded.selection.line())

    log.info("\n5/5 predict: the exported artifact, on that backend, on %d test images, a breed it never saw and an image of no dog", show)
    classes = sorted(p for p in (data / "test").iterdir() if p.is_dir())[:show]
    files = [expand([folder])[0] for folder in classes]
    if (data / "unseen").is_dir():  # a demo folder from before unseen breeds has none
        files += expand([sorted(p for p in (data / "unseen").iterdir() if p.is_dir())[0]])[:1]
    files.append(_noise_image(out / "not-a-dog.png", DEMO_DATA["size"]))
    opts = Options.of(loaded)
    for path, answer in predict_files(loaded, files, opts):
        log.info(format_answer(path, answer, opts.threshold))
    log.info(
        "\ndemo done on synthetic data: test accuracy %.1f%% (trained from scratch), %.1f%% (tuned head)\n"
        "  training run: %s\n  profile:      %s (rules, charts; `dogbreed report RUN` rebuilds it)\n"
        "  tuning:       %s (best.json, trials.csv, plots/)\n  artifact:     %s\n  exported:     %s\n"
        "  try:          dogbreed predict %s --model %s\n"
        "  honest?       dogbreed evaluate --model %s --data %s --ood %s\n"
        "  serve it:     dogbreed serve --model %s   (then open http://127.0.0.1:8080/)",
        100 * result.test["test_accuracy"], 100 * loaded.meta["metrics"]["test_accuracy"], result.run_dir,
        result.run_dir / "profile" / "report.html", tuned.study_dir, tuned.artifact, exported, data / "test", exported,
        tuned.artifact, data, data / "unseen", exported,
    )
    return exported


def _noise_image(path: Path, size: int) -> Path:
    """Random pixels: an image with no dog in it, for the demo's "not a dog" answer."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path
