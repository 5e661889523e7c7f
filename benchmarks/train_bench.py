"""Training speed: the cached-embedding path against recomputing the backbone every epoch.

Both runs train the same frozen backbone's head on the same synthetic data with the same
hyperparameters (the seed's 9 epochs, batch 29, lr 0.0044), one after the other in this process.
The uncached run is what the original SageMaker script did every epoch. Random weights stand in for
ImageNet's (this machine cannot download them): speed does not depend on the weights' values.

    python benchmarks/train_bench.py                      # resnet50, 224 px, 10 classes x 40 images
    python benchmarks/train_bench.py --classes 20 --per-class 60 --backbone resnet18
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from dogbreed import config, machine
from dogbreed.data.layout import scan
from dogbreed.data.synth import synth
from dogbreed.run import train
from dogbreed.train import amp_dtype_for


def timed_run(overrides: dict) -> tuple[float, object]:
    start = time.perf_counter()
    result = train(config.resolve(overrides=overrides), progress=False)
    return time.perf_counter() - start, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--aug-views", type=int, default=2)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dogbreed-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, progress=False)
        common = {"data": str(data), "out": str(tmp / "runs"), "backbone": args.backbone, "pretrained": False,
                  "epochs": args.epochs, "image_size": args.size, "aug_views": args.aug_views,
                  "cache_dir": str(tmp / "cache"), "amp": args.amp}
        counts = {split: sum(c) for split, c in scan(data).counts().items()}
        n_train, n_eval = counts["train"], counts["valid"]  # valid and test are the same size

        cold, cached = timed_run({**common, "name": "cached"})
        warm, _ = timed_run({**common, "name": "cached-warm", "lr": 0.001})
        uncached_s, uncached = timed_run({**common, "name": "uncached", "feature_cache": False})
        stats = json.loads((cached.run_dir / "results.json").read_text())["feature_cache"]

    extracted = stats["images_embedded"]
    head_epoch = sum(r["seconds"] for r in cached.history) / len(cached.history)
    image_epoch = sum(r["seconds"] for r in uncached.history) / len(uncached.history)
    amp = amp_dtype_for(torch.device("cpu"), args.amp)
    print(f"\n## train_bench: {args.backbone}, {args.size} px, {args.classes} classes x {args.per_class} images "
          f"({n_train} train / {n_eval} valid / {n_eval} test), {args.epochs} epochs, aug_views={args.aug_views}")
    print(f"machine: {machine.describe()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, amp {amp or 'off'}, device cpu\n")
    print("| measure | value |\n|---|---|")
    print(f"| cached run, cold cache (embed {extracted} images + {args.epochs} head epochs) | {cold:.1f} s |")
    print(f"| cached run, warm cache (what a tuning trial costs) | {warm:.1f} s |")
    print(f"| uncached run (backbone recomputed every epoch) | {uncached_s:.1f} s |")
    print(f"| **speed-up, cold cache** | **{uncached_s / cold:.1f}x** |")
    print(f"| **speed-up, warm cache** | **{uncached_s / warm:.1f}x** |")
    print(f"| embedding extraction | {stats['images_per_second']:.1f} img/s ({stats['embed_seconds']:.1f} s) |")
    print(f"| head epoch on cached embeddings | {head_epoch * 1000:.1f} ms |")
    print(f"| image epoch, frozen backbone | {image_epoch:.1f} s |")
    print(f"| test accuracy cached / uncached | {cached.test['test_accuracy']:.3f} / {uncached.test['test_accuracy']:.3f} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
