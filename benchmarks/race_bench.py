"""What ``auto``'s race costs a job of known size (``monitor run``, ``monitor baseline``,
``transform``), with the job's size given (at most a quarter of eager's time for its images) and
without (the server's race: up to the 10 s budget), side by side.

A network with a 133-way head (random weights: speed does not depend on their values) is packed
as an artifact and exported to TorchScript and ONNX, so that ``auto`` has three candidates. For
each job size, alternately ``--rounds`` times: the artifact loaded on ``auto`` without a size, then
with it. Each line gives the race's seconds, the backend it chose and the job's estimated time on
it (images / the chosen backend's measured rate; eager's where only eager was timed).

    python benchmarks/race_bench.py [--backbone resnet50] [--sizes 120,1000,10000] [--rounds 2]
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

from dogbreed import machine  # noqa: E402


def race(artifact: Path, images: int | None, size: int) -> dict:
    from dogbreed.artifact import load_artifact

    started = time.perf_counter()
    loaded = load_artifact(artifact, backend="auto", images=images)
    seconds = time.perf_counter() - started
    selection = loaded.selection
    job_s = size / selection.speed(selection.chosen) if selection.chosen in selection.measured else None
    return {"race_s": round(seconds, 2), "chosen": selection.chosen, "timed": sorted(selection.measured),
            "job_s": job_s and round(job_s, 1), "total_s": job_s and round(seconds + job_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--sizes", default="120,1000,10000", help="job sizes in images, comma-separated")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    from dogbreed.export import export

    print(f"# {machine.describe()}; torch {torch.__version__}; {args.backbone}, 133 classes")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export(make_artifact(Path(tmp), args.backbone), "torchscript,onnx", progress=False)
        for size in (int(s) for s in args.sizes.split(",")):
            for r in range(args.rounds):
                row = {"images": size, "round": r + 1, "unsized": race(artifact, None, size), "sized": race(artifact, size, size)}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
