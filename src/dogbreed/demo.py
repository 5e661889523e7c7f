"""``dogbreed demo``: the whole workflow offline on synthetic data, in about two and a half minutes
on 2 CPU cores (141 s on an AVX2-only EPYC), most of it the training from scratch: data, a profiled
training, tuning, the exports with their accuracy gate, predictions on the fastest backend that
passed it, and after deployment: the server capturing its requests, and the monitor finding a
window of darker photos."""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path

from dogbreed import config as cfgmod
from dogbreed.artifact import extracted, load_artifact
from dogbreed.data.synth import synth
from dogbreed.errors import DogbreedError
from dogbreed.export import export
from dogbreed.predict import expand, explained_path, format_answer, predict_files, write_explained
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
    "epochs": 5,
    "batch_size": 32,
    "lr": 0.002,
}
DEMO_DATA = {"classes": 10, "per_class": 40, "size": 128, "seed": 0, "unseen": 2}
DEMO_TUNE = {"trials": 6, "parallel": 2}


def run_demo(out: str | Path = "demo", *, progress: bool = True, show: int = 3) -> Path:
    out = Path(out)
    data = out / "data"
    if not (data / "train").is_dir():
        log.info("1/7 data: synthesizing %d classes x %d images in %s", DEMO_DATA["classes"], DEMO_DATA["per_class"], data)
        synth(data, progress=progress, **DEMO_DATA)
    else:
        log.info("1/7 data: reusing %s", data)

    log.info("2/7 train (profiled: system, steps, debugger tensors, rules): %s",
             ", ".join(f"{k}={v}" for k, v in DEMO_RECIPE.items()))
    cfg = cfgmod.resolve(overrides={**DEMO_RECIPE, "data": str(data), "out": str(out / "runs")})
    result = train(cfg, progress=progress)

    # The network just trained stands in for ImageNet weights: its backbone is frozen and the tuning
    # trials train heads on its cached embeddings, as they would on a pretrained resnet50.
    backbone = out / "backbone.pth"
    with extracted(result.artifact) as model_dir:
        shutil.copyfile(model_dir / "model.pth", backbone)
    log.info("\n3/7 tune: %d trials, %d workers, head only on cached embeddings of the trained backbone", *DEMO_TUNE.values())
    base = cfgmod.resolve(overrides={**DEMO_RECIPE, "train_layers": "head", "weights": str(backbone),
                                     "data": str(data), "out": str(out / "runs")})
    study = f"demo-{result.run_dir.name}"
    tuned = tune(base, TuneOptions(study=study, **DEMO_TUNE), progress=progress)

    log.info("\n4/7 export: TorchScript, ONNX and int8, each checked against fp32 on the validation images")
    exported = export(tuned.artifact, "all", data=data, progress=progress)
    loaded = load_artifact(exported, backend="auto", budget_s=4)
    log.info("  %s: %s", exported.name, loaded.selection.line())

    log.info("\n5/7 predict: the exported artifact, on that backend, on %d test images, a breed it never saw and an image of no dog", show)
    classes = sorted(p for p in (data / "test").iterdir() if p.is_dir())[:show]
    files = [expand([folder])[0] for folder in classes]
    if (data / "unseen").is_dir():  # a demo folder from before unseen breeds has none
        files += expand([sorted(p for p in (data / "unseen").iterdir() if p.is_dir())[0]])[:1]
    files.append(_noise_image(out / "not-a-dog.png", DEMO_DATA["size"]))
    opts = Options.of(loaded)
    for path, answer in predict_files(loaded, files, opts):
        log.info(format_answer(path, answer, opts.threshold))
    log.info("\n6/7 monitor: serve with --capture, send a window of photos like the training set's and one of darker "
             "photos, run the monitor over each")
    report = _monitor(exported, out)
    log.info("\n7/7 explain: where the model looked in %s", files[0])
    (path, answer), = predict_files(loaded, files[:1], opts.override(explain="grid"))
    answer = write_explained(loaded, path, answer, opts.threshold, explained_path(path, str(out / "explained")))
    explained = answer.get("explanation") or f"none ({answer.get('heatmap_error')})"
    log.info("  %s for %s (top-1 probability %.3f): %s", (answer.get("heatmap_method") or "no map").upper(),
             answer["breeds"][0], answer["topk_probs"][0], explained)
    log.info(
        "\ndemo done on synthetic data: test accuracy %.1f%% (trained from scratch), %.1f%% (tuned head)\n"
        "  training run: %s\n  profile:      %s (rules, charts; `dogbreed report RUN` rebuilds it)\n"
        "  tuning:       %s (best.json, trials.csv, plots/)\n  artifact:     %s\n  exported:     %s\n"
        "  try:          dogbreed predict %s --model %s\n"
        "  honest?       dogbreed evaluate --model %s --data %s --ood %s\n"
        "  serve it:     dogbreed serve --model %s   (then open http://127.0.0.1:8080/)\n"
        "  monitor:      %s (`dogbreed monitor run --capture %s --baseline %s`)\n"
        "  explained:    %s (`dogbreed predict IMAGE --model %s --explain`)",
        100 * result.test["test_accuracy"], 100 * loaded.meta["metrics"]["test_accuracy"], result.run_dir,
        result.run_dir / "profile" / "report.html", tuned.study_dir, tuned.artifact, exported, data / "test", exported,
        tuned.artifact, data, data / "unseen", exported, report, out / "capture", exported, explained, exported,
    )
    return exported


def _monitor(artifact: Path, out: Path) -> Path:
    """The artifact served with capture on, two windows of requests sent to it (the training
    set's world, then darker), and one monitoring execution over each; returns the report."""
    import urllib.request
    from datetime import datetime, timedelta, timezone

    from dogbreed.capture.records import timestamp
    from dogbreed.data.synth import requests
    from dogbreed.drift import execute

    world = {k: DEMO_DATA[k] for k in ("classes", "size", "seed")}
    capture, monitoring = out / "capture", out / "monitoring"
    shutil.rmtree(capture, ignore_errors=True)
    shutil.rmtree(monitoring, ignore_errors=True)
    bounds = []
    with _serving(artifact, capture) as url:
        for drift in ("none", "dark"):
            bounds.append(datetime.now(timezone.utc).replace(microsecond=0))
            for image, _ in requests(60, draw=len(bounds), drift=drift, **world):
                urllib.request.urlopen(urllib.request.Request(f"{url}/invocations", data=image,
                                                              headers={"Content-Type": "image/jpeg"}), timeout=60).read()
            time.sleep(1.1)  # the next window starts on the next second (records keep whole seconds)
    bounds.append(datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1))
    for name, start, end in zip(("like training", "darker"), bounds, bounds[1:]):
        done = execute.run(str(capture), str(artifact), start=timestamp(start), end=timestamp(end), out=str(monitoring),
                           progress=False)
        found = ", ".join(c.name for c in done.violations) or "none"
        log.info("  window %s (%d images): %d violation(s): %s", name, done.images, len(done.violations), found)
    return monitoring / "report.html"


@contextlib.contextmanager
def _serving(artifact: Path, capture: Path):
    """``dogbreed serve --capture`` as its own process on a free port, until the block ends."""
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(artifact), "--port", "0",
                             "--capture", str(capture), "--backend-budget-s", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:  # "serving ... on http://127.0.0.1:PORT (...": the port the system chose
            if " on http://" in line:
                url = line.split(" on ", 1)[1].split()[0]
                break
        if url is None:
            raise DogbreedError(f"the demo's server did not start (exit status {proc.wait()})")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # what else it says never fills the pipe
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()  # the server writes what it has queued before it ends
        proc.wait(timeout=60)


def _noise_image(path: Path, size: int) -> Path:
    """Random pixels: an image with no dog in it, for the demo's "not a dog" answer."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path
