"""How fast ``dogbreed transform`` scores a folder, against what the same machine does otherwise,
all in one run:

- in-process: the same loaded model (the best backend, ``auto``) over the same files in a plain
  loop, batches of ``--batch-size``: read, decode, predict, one batch after another (what a user's
  own script does); and the network alone on images decoded beforehand (the ceiling);
- ``dogbreed transform`` (local engine): the job's own seconds, its model's load apart;
- ``dogbreed transform --engine ray`` on a local Ray cluster (one actor: 2 CPUs per actor), the
  actors' start and model load inside its time, the cluster's own start apart;
- a loop of ``dogbreed predict IMAGE`` calls, one process per file (how a user scores a folder
  without transform), on the first ``--predict-calls`` files only.

A resnet50 with a 133-way head (random weights: speed does not depend on their values) is packed as
an artifact with its ONNX and TorchScript exports; the inputs are ``--images`` synthetic JPEGs (``synth.requests``) of ``--size`` pixels.

    python benchmarks/transform_bench.py [--images 2000] [--size 320] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capture_bench import make_artifact  # noqa: E402

from dogbreed import machine  # noqa: E402


def in_process(loaded, files: list[Path], batch: int) -> float:
    from dogbreed.runtime import pipeline

    options = pipeline.Options.of(loaded)
    started = time.perf_counter()
    for start in range(0, len(files), batch):
        pixels = [pipeline.decode(loaded, f.read_bytes()) for f in files[start : start + batch]]
        pipeline.predict(loaded, pixels, options)
    return len(files) / (time.perf_counter() - started)


def network_only(loaded, files: list[Path], batch: int) -> float:
    from dogbreed.runtime import pipeline

    options = pipeline.Options.of(loaded)
    pixels = [pipeline.decode(loaded, f.read_bytes()) for f in files]
    started = time.perf_counter()
    for start in range(0, len(pixels), batch):
        pipeline.predict(loaded, pixels[start : start + batch], options)
    return len(pixels) / (time.perf_counter() - started)


def job(artifact: Path, src: Path, dest: Path, backend: str, batch: int, *extra: str) -> tuple[float, float]:
    """(images/s by the job's own clock, wall seconds of the whole command)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dogbreed", "transform", "--model", str(artifact), "--input", str(src),
                           "--output", str(dest), "--backend", backend, "--batch-size", str(batch), "--no-progress", *extra],
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"transform failed: {done.stderr[-2000:]}")
    return float(re.search(r"\(([\d.]+) img/s", done.stdout)[1]), wall


def predict_loop(artifact: Path, files: list[Path]) -> float:
    started = time.perf_counter()
    for f in files:
        subprocess.run([sys.executable, "-m", "dogbreed", "predict", "--model", str(artifact), "--json", str(f)],
                       capture_output=True, check=True, timeout=600)
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--predict-calls", type=int, default=10)
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()

    from dogbreed.artifact import load_artifact
    from dogbreed.data.synth import requests

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        for i, (body, _) in enumerate(requests(args.images, size=args.size, seed=3)):
            (src / f"{i:05d}.jpg").write_bytes(body)
        files = sorted(src.iterdir())
        print(f"# {machine.describe()}; torch {torch.__version__}; {len(files)} JPEGs of {args.size} px "
              f"({sum(f.stat().st_size for f in files) / len(files) / 1024:.0f} KB on average), batch {args.batch_size}")
        from dogbreed.export import export

        # ONNX fp32 and TorchScript beside model.pth: auto races them against eager (bf16 and int8 need
        # the accuracy gate, which random weights do not pass)
        artifact = export(make_artifact(tmp, "resnet50"), "onnx,torchscript", tmp / "resnet50-exported.tar.gz",
                          progress=False)
        loaded = load_artifact(artifact, backend="auto", batch_sizes=(args.batch_size,))
        backend = loaded.backend
        print(f"# backend: {loaded.selection.line() if loaded.selection else backend}")
        rows: dict[str, list[float]] = {"network_only": [], "in_process": [], "transform": [], "transform_wall_s": [],
                                        "ray": [], "ray_wall_s": []}
        for r in range(args.rounds):
            rows["network_only"].append(network_only(loaded, files, args.batch_size))
            rows["in_process"].append(in_process(loaded, files, args.batch_size))
            rate, wall = job(artifact, src, tmp / f"out{r}", backend, args.batch_size)
            rows["transform"].append(rate)
            rows["transform_wall_s"].append(wall)
            if not args.no_ray:
                rate, wall = job(artifact, src, tmp / f"ray{r}", backend, args.batch_size, "--engine", "ray")
                rows["ray"].append(rate)
                rows["ray_wall_s"].append(wall)
        rows["predict_loop"] = [predict_loop(artifact, files[: args.predict_calls])]

        def mean(key: str) -> float:
            return sum(rows[key]) / len(rows[key]) if rows[key] else float("nan")

        summary = {k: [round(x, 1) for x in v] for k, v in rows.items()}
        summary["transform_vs_in_process"] = round(mean("transform") / mean("in_process"), 3)
        summary["transform_vs_network_only"] = round(mean("transform") / mean("network_only"), 3)
        summary["transform_vs_predict_loop"] = round(mean("transform") / mean("predict_loop"), 1)
        if rows["ray"]:
            summary["ray_vs_transform"] = round(mean("ray") / mean("transform"), 3)
            summary["ray_vs_transform_wall"] = round(mean("transform_wall_s") / mean("ray_wall_s"), 3)
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
