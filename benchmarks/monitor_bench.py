"""How fast ``dogbreed monitor run`` judges a window, against the same images through the best
backend in-process (decode + preprocess + forward, batches of 32: what ``dogbreed predict`` does).

A resnet50 with a 133-way head (random weights: speed does not depend on their values) is packed as
an artifact; its baseline is the sample photos themselves. ``--images`` captured requests (the
sample photos, real JPEGs of varied size, over and over) are written by the capture writer in
SageMaker's format. Then, alternately ``--rounds`` times: the in-process pass, and one monitoring
execution over the window, timed by phase (read the capture files, re-embed, run the checks, write
the results and report; the model's load is reported apart, as a scheduler pays it once per
execution whatever the window's size).

    python benchmarks/monitor_bench.py [--images 480] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_bench import make_artifact  # noqa: E402
from serve_bench import REPO  # noqa: E402

from dogbreed import machine  # noqa: E402


def in_process(loaded, bodies: list[bytes]) -> float:
    from dogbreed.runtime import pipeline

    options = pipeline.Options.of(loaded)
    started = time.perf_counter()
    for start in range(0, len(bodies), 32):
        chunk = bodies[start : start + 32]
        pixels = [pipeline.decode(loaded, body) for body in chunk]
        pipeline.predict(loaded, pixels, options)
    return len(bodies) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--photos", default=str(REPO.parent / "shared" / "samples" / "photos"))
    args = p.parse_args()

    from dogbreed.artifact import load_artifact
    from dogbreed.capture.writer import CaptureWriter
    from dogbreed.drift import execute
    from dogbreed.drift.baseline import Baseline
    from dogbreed.drift.observe import observe

    photos = sorted(Path(args.photos).glob("*.jpg"))
    bodies = [photos[i % len(photos)].read_bytes() for i in range(args.images)]
    print(f"# {machine.describe()}; torch {torch.__version__}; {args.images} captured images ({len(photos)} photos, "
          f"{sum(len(b) for b in bodies) / len(bodies) / 1024:.0f} KB on average)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        artifact = make_artifact(tmp, "resnet50")
        loaded = load_artifact(artifact, backend="auto")
        print(f"# backend: {loaded.selection.line() if loaded.selection else loaded.backend}")
        Baseline.of(observe(loaded, [p.read_bytes() for p in photos]), loaded.labels).write(tmp / "baseline")
        writer = CaptureWriter(tmp / "capture", "dogbreed").start()
        answer = json.dumps({"topk_labels": ["001.Breed_001"], "topk_probs": [0.9]}).encode()
        for i, body in enumerate(bodies):
            writer.submit(f"event-{i}", request=(body, "image/jpeg"), response=(answer, "application/json"))
        writer.close()
        local, monitor, phases = [], [], []
        for r in range(args.rounds):
            local.append(in_process(loaded, bodies))
            done = execute.run(str(tmp / "capture"), str(tmp / "baseline"), model=str(artifact), out=str(tmp / f"out{r}"),
                               backend="auto", progress=False)
            assert done.images == args.images, done.images
            work = sum(v for k, v in done.seconds.items() if k != "load")
            monitor.append(args.images / work)
            phases.append({k: round(v, 2) for k, v in done.seconds.items()})
        ratio = (sum(monitor) / len(monitor)) / (sum(local) / len(local))
        print(json.dumps({"in_process_img_s": [round(x, 1) for x in local], "monitor_img_s": [round(x, 1) for x in monitor],
                          "monitor_vs_in_process": round(ratio, 3), "phases_s": phases}, indent=1))


if __name__ == "__main__":
    main()
