"""Tuning cost: dogbreed's study against what SageMaker's tuner does, on the same trials.

dogbreed: 8 trials of the original search space (lr 1e-4..1e-2 log, batch 8..32, epochs 3..10)
with a frozen backbone, the shared embedding cache and the median pruner, 2 local workers.
The tuner's way: the same 8 hyperparameter sets trained independently to their full epochs, each
recomputing the backbone on every image every epoch (one SageMaker training job per trial), one
after another on the same cores. Both in this process, one after the other. Random weights stand in
for ImageNet's (no downloads here): speed does not depend on the weights' values.

    python benchmarks/tune_bench.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from dogbreed import config, machine
from dogbreed.data.layout import scan
from dogbreed.data.synth import synth
from dogbreed.run import train
from dogbreed.tune.options import TuneOptions
from dogbreed.tune.tuner import tune


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=30)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"

    with tempfile.TemporaryDirectory(prefix="dogbreed-tune-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, progress=False)
        counts = {s: sum(c) for s, c in scan(data).counts().items()}
        base = config.resolve(overrides={"data": str(data), "out": str(tmp / "runs"), "backbone": args.backbone,
                                         "pretrained": False, "image_size": args.size, "cache_dir": str(tmp / "cache")})

        start = time.perf_counter()
        result = tune(base, TuneOptions(trials=args.trials, parallel=args.parallel, study="pruned", final=False), progress=False)
        ours = time.perf_counter() - start
        best = json.loads((result.study_dir / "best.json").read_text())

        start = time.perf_counter()
        cold = dataclasses.replace(base, cache_dir=str(tmp / "cache-2"))  # a cold cache too, for a fair comparison
        tune(cold, TuneOptions(trials=args.trials, parallel=args.parallel, study="unpruned", pruner="none", final=False),
             progress=False)
        ours_unpruned = time.perf_counter() - start

        param_sets = [{k[6:]: v for k, v in row.items() if k.startswith("param_")} for row in result.rows]
        epochs_full = sum(ps["epochs"] for ps in param_sets)
        start = time.perf_counter()
        for i, ps in enumerate(param_sets):
            cfg = dataclasses.replace(base, **ps, feature_cache=False, name=f"job-{i}")
            train(cfg, progress=False)
        theirs = time.perf_counter() - start

    print(f"\n## tune_bench: {args.trials} trials, {args.backbone} frozen, {args.size} px, {args.classes} classes x "
          f"{args.per_class} images ({counts['train']}/{counts['valid']}/{counts['test']}), cpu ({machine.describe()}), "
          f"torch {torch.__version__}\n")
    print("| measure | value |\n|---|---|")
    print(f"| dogbreed tune ({args.parallel} workers, cache + median pruner, cold cache) | {ours:.1f} s |")
    print(f"| dogbreed tune ({args.parallel} workers, cache, no pruner, cold cache) | {ours_unpruned:.1f} s |")
    print(f"| {args.trials} independent trainings, backbone every epoch ({epochs_full} epochs in all) | {theirs:.1f} s |")
    print(f"| **speed-up (cache + pruning)** | **{theirs / ours:.1f}x** |")
    print(f"| speed-up (cache alone) | {theirs / ours_unpruned:.1f}x |")
    print(f"| trials pruned / epochs saved by pruning | {best['pruning']['pruned']} / {best['pruning']['epochs_saved']} of {epochs_full} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
