"""``dogbreed demo``: the whole workflow offline on synthetic data, in about a minute on a CPU."""

from __future__ import annotations

import logging
from pathlib import Path

from dogbreed import config as cfgmod
from dogbreed.data.synth import synth
from dogbreed.predict import expand, format_answer, predict_files
from dogbreed.artifact import load_artifact
from dogbreed.run import train

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
DEMO_DATA = {"classes": 10, "per_class": 40, "size": 128, "seed": 0}


def run_demo(out: str | Path = "demo", *, progress: bool = True, show: int = 3) -> Path:
    out = Path(out)
    data = out / "data"
    if not (data / "train").is_dir():
        log.info("1/3 data: synthesizing %d classes x %d images in %s", DEMO_DATA["classes"], DEMO_DATA["per_class"], data)
        synth(data, progress=progress, **DEMO_DATA)
    else:
        log.info("1/3 data: reusing %s", data)

    log.info("2/3 train: %s", ", ".join(f"{k}={v}" for k, v in DEMO_RECIPE.items()))
    cfg = cfgmod.resolve(overrides={**DEMO_RECIPE, "data": str(data), "out": str(out / "runs")})
    result = train(cfg, progress=progress)

    log.info("3/3 predict: the artifact on %d test images", show)
    loaded = load_artifact(result.artifact)
    classes = sorted(p for p in (data / "test").iterdir() if p.is_dir())[:show]
    files = [expand([folder])[0] for folder in classes]
    for path, answer in predict_files(loaded, files):
        log.info(format_answer(path, answer, loaded.threshold))
    log.info(
        "\ndemo done: test accuracy %.1f%% on synthetic data\n  run folder: %s\n  artifact:   %s\n"
        "  try:        dogbreed predict %s --model %s",
        100 * result.test["test_accuracy"], result.run_dir, result.artifact, data / "test", result.artifact,
    )
    return result.artifact
