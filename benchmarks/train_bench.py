"""Training speed: the cached-embedding path on each embedding backend against recomputing the
backbone every epoch.

Every run trains the same frozen backbone's head on the same synthetic data with the same
hyperparameters (the seed's 9 epochs, batch 29, lr 0.0044), one after the other in this process:

- cold cache on ``--embed-backend auto`` (the default), on eager fp32 (amp off), on eager at the
  run's precision (bf16 where the CPU has it natively) and on ONNX Runtime (its export included);
- warm cache (what a tuning trial costs);
- uncached fp32: the backbone run on every image every epoch, as the original SageMaker script did.

Random weights stand in for ImageNet's (this machine cannot download them): speed does not depend
on the weights' values.

    python benchmarks/train_bench.py                      # resnet50, 224 px, 10 classes x 40 images
    python benchmarks/train_bench.py --classes 20 --per-class 60 --backbone resnet18
    python benchmarks/train_bench.py --before 4b6b659      # the first training: that commit's code against this one's

``--before REV`` measures only the first training (cold cache, default settings) with the code at
git revision REV and with the working tree's, alternately (``--rounds`` each, every run on its own
empty cache, in its own process), beside the uncached fp32 run. Those processes set the allocator
as every ``dogbreed`` command does (``machine.keep_freed_memory``); the uncached stand-in for the
original script runs in this process with glibc's defaults, as that script did.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
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


FIRST_RUN = """
import json, sys, time
from dogbreed import config, machine
from dogbreed.run import train
getattr(machine, "keep_freed_memory", lambda: None)()  # as the command does (code before it did not)
started = time.perf_counter()
result = train(config.resolve(overrides=json.loads(sys.argv[1])), progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "accuracy": result.test["test_accuracy"]}))
"""


def first_run(source: Path, overrides: dict) -> dict:
    """One cold first training with the package at ``source`` (a tree's src/), in its own process."""
    out = subprocess.run([sys.executable, "-c", FIRST_RUN, json.dumps(overrides)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(source), "TQDM_DISABLE": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def before_and_after(rev: str, common: dict, tmp: Path, rounds: int) -> None:
    """The first training on the code at ``rev`` against the working tree's, alternately."""
    repo = Path(__file__).resolve().parents[1]
    old = tmp / "before"
    subprocess.run(f"git -C {repo} archive {rev} src | tar -x -C {old.parent} --one-top-level={old.name}", shell=True,
                   check=True)
    trees = {f"before ({rev})": old / "src", "after (this tree)": repo / "src"}
    times: dict[str, list[dict]] = {name: [] for name in trees}
    for i in range(rounds):
        for name, source in trees.items():
            times[name].append(first_run(source, {**common, "name": f"{name[:5]}-{i}",
                                                  "cache_dir": str(tmp / f"cache-{name[:5]}-{i}")}))
    uncached_s, _ = timed_run({**common, "name": "uncached", "feature_cache": False, "amp": "off"})
    print(f"\n## train_bench --before {rev}: the first training, cold cache, default settings "
          f"({common['backbone']}, {common['image_size']} px)")
    print(f"machine: {machine.describe()}, torch {torch.__version__}\n")
    print("| code | wall, each round | median | test accuracy | uncached fp32 / this |\n|---|---|---|---|---|")
    medians = {}
    for name, runs in times.items():
        medians[name] = statistics.median(r["seconds"] for r in runs)
        walls = ", ".join(f"{r['seconds']:.1f} s" for r in runs)
        accuracies = ", ".join(f"{r['accuracy']:.3f}" for r in runs)
        print(f"| {name} | {walls} | {medians[name]:.1f} s | {accuracies} | {uncached_s / medians[name]:.1f}x |")
    before, after = medians.values()
    print(f"\n- uncached fp32 (the original script's way): {uncached_s:.1f} s")
    print(f"- **before / after: {before / after:.2f}x**; **uncached / after: {uncached_s / after:.1f}x** (aim >= 12)")
    print(f"\ncommand: python {' '.join(sys.argv)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--aug-views", type=int, default=2)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--before", metavar="REV", help="measure only the first training, against the code at REV")
    p.add_argument("--rounds", type=int, default=2, help="with --before: runs of each code, alternating")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dogbreed-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, progress=False)
        common = {"data": str(data), "out": str(tmp / "runs"), "backbone": args.backbone, "pretrained": False,
                  "epochs": args.epochs, "image_size": args.size, "aug_views": args.aug_views, "amp": args.amp}
        if args.before:
            return before_and_after(args.before, common, tmp, args.rounds)
        counts = {split: sum(c) for split, c in scan(data).counts().items()}
        n_train, n_eval = counts["train"], counts["valid"]  # valid and test are the same size

        cold = {  # each on its own empty cache
            "auto": {},
            "eager fp32": {"embed_backend": "eager", "amp": "off"},
            f"eager, amp {args.amp}": {"embed_backend": "eager"},
            "onnx (export included)": {"embed_backend": "onnx"},
        }
        runs = {name: timed_run({**common, **extra, "name": f"cold-{i}", "cache_dir": str(tmp / f"cache-{i}")})
                for i, (name, extra) in enumerate(cold.items())}
        warm, _ = timed_run({**common, "name": "warm", "lr": 0.001, "cache_dir": str(tmp / "cache-0")})
        uncached_s, uncached = timed_run({**common, "name": "uncached", "feature_cache": False, "amp": "off"})
        stats = {name: json.loads((result.run_dir / "results.json").read_text())["feature_cache"]
                 for name, (_, result) in runs.items()}

    auto_s, auto = runs["auto"]
    extracted = stats["auto"]["images_embedded"]
    head_epoch = sum(r["seconds"] for r in auto.history) / len(auto.history)
    image_epoch = sum(r["seconds"] for r in uncached.history) / len(uncached.history)
    amp = amp_dtype_for(torch.device("cpu"), args.amp)
    print(f"\n## train_bench: {args.backbone}, {args.size} px, {args.classes} classes x {args.per_class} images "
          f"({n_train} train / {n_eval} valid / {n_eval} test), {args.epochs} epochs, aug_views={args.aug_views}")
    print(f"machine: {machine.describe()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, amp {amp or 'off'}, device cpu\n")
    print("| run | wall | embedding | img/s | test accuracy |\n|---|---|---|---|---|")
    for name, (seconds, result) in runs.items():
        chosen = stats[name]["backend"]
        how = chosen["chosen"] + (f" (export {chosen['export_seconds']:.0f} s)" if chosen.get("export_seconds") else "")
        print(f"| cold cache, {name} (embed {extracted} images + {args.epochs} head epochs) | {seconds:.1f} s | {how} | "
              f"{stats[name]['images_per_second']:.1f} | {result.test['test_accuracy']:.3f} |")
    print(f"| warm cache (what a tuning trial costs) | {warm:.1f} s | - | - | - |")
    print(f"| uncached fp32 (backbone every epoch, as the original script) | {uncached_s:.1f} s | - | - | "
          f"{uncached.test['test_accuracy']:.3f} |")
    why = stats["auto"]["backend"]
    print(f"\nauto measured {why['measured']} img/s on its first batch and chose {why['chosen']}"
          f"{'; ' + why['why'] if why.get('why') else ''}.")
    print(f"\n- **cold cache, auto / eager fp32: {runs['eager fp32'][0] / auto_s:.2f}x** (aim >= 1.4)")
    print(f"- **uncached fp32 / cold cache auto: {uncached_s / auto_s:.1f}x** (aim >= 10 against the original script)")
    print(f"- uncached fp32 / warm cache: {uncached_s / warm:.1f}x")
    print(f"- head epoch on cached embeddings {head_epoch * 1000:.1f} ms; image epoch, frozen backbone, fp32 "
          f"{image_epoch:.1f} s")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
