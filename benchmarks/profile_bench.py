"""Profiling overhead: training steps with and without the monitor, side by side in one process.

1. Head path (frozen backbone, cached embeddings): random embeddings shaped like dogImages'
   (6,680 train images x 2 augmented views, 2048-d, 133 classes, batch 29: 231 steps per epoch).
   Step cost does not depend on the values. Epochs alternate monitor off / on; the monitor runs
   with the default settings but no trace window, whose one-off cost is measured on its own.
2. Image path (resnet50 layer4 + head fine-tuned on 224 px synthetic images): whole `dogbreed
   train` runs with --profile and --no-profile, alternating, compared by their per-epoch seconds.

    python benchmarks/profile_bench.py
    python benchmarks/profile_bench.py --rounds 20 --image-epochs 3
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dogbreed import config, machine
from dogbreed.data.loaders import TensorBatches
from dogbreed.data.synth import synth
from dogbreed.hooks import NO_HOOKS
from dogbreed.monitor import Monitor
from dogbreed.run import train
from dogbreed.train import cosine_schedule, evaluate, train_one_epoch


def head_epochs(folder: Path, rounds: int) -> dict:
    torch.manual_seed(0)
    n, dim, classes, batch = 6680, 2048, 133, 29
    train_x = torch.randn(2, n, dim).half()
    batches = TensorBatches(train_x, torch.randint(classes, (n,)), batch, shuffle=True)
    val = TensorBatches(torch.randn(835, dim).half(), torch.randint(classes, (835,)), 1024, shuffle=False)
    head = nn.Linear(dim, classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.0044, weight_decay=1e-4)
    scheduler = cosine_schedule(optimizer, 1_000_000)
    device = torch.device("cpu")

    def monitor_for(name: str, trace_steps: int) -> Monitor:
        m = Monitor(folder / name, device=device, meta={}, trace_steps=trace_steps)
        m.watch(head, prefix="fc.")
        return m

    def epoch(monitor, number: int) -> float:
        monitor.epoch_begin(number)
        start = time.perf_counter()
        train_one_epoch(head, batches, optimizer, scheduler, device=device, hooks=monitor)
        seconds = time.perf_counter() - start
        result = evaluate(head, val, device=device, hooks=monitor)
        monitor.epoch_end({"epoch": number, "train_loss": 1.0, "val_loss": result.loss, "val_accuracy": result.accuracy,
                           "val_top5": result.top5, "lr": 0.0, "seconds": seconds})
        return seconds

    on = monitor_for("head-on", trace_steps=0)
    for warm in range(3):
        epoch(NO_HOOKS, warm)
        epoch(on, warm)
    times = {"off": [], "on": []}
    for r in range(rounds):  # adjacent pairs, alternating which goes first: drift cancels within a pair
        for mode in (("off", "on") if r % 2 else ("on", "off")):
            times[mode].append(epoch(on if mode == "on" else NO_HOOKS, r))
    on.close()
    pairs = sorted(a / b for a, b in zip(times["on"], times["off"]))
    traced = monitor_for("head-trace", trace_steps=5)
    trace_epoch = epoch(traced, 0)
    traced.close()
    start = time.perf_counter()
    from dogbreed.monitor.report import write_report

    write_report(folder / "head-on")
    report_s = time.perf_counter() - start
    steps = len(batches)
    off, with_monitor = statistics.median(times["off"]), statistics.median(times["on"])
    return {"steps": steps, "off_ms": 1000 * off / steps, "on_ms": 1000 * with_monitor / steps,
            "ratio": statistics.median(pairs), "iqr": quartiles(pairs), "trace_s": trace_epoch - with_monitor,
            "report_s": report_s}


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def image_runs(folder: Path, epochs: int, rounds: int) -> dict:
    data = synth(folder / "data", classes=10, per_class=40, size=224, progress=False)
    common = {"data": str(data), "out": str(folder / "runs"), "backbone": "resnet50", "pretrained": False,
              "train_layers": "layer4", "epochs": epochs, "batch_size": 29}
    epoch_s = {"off": [], "on": []}
    wall = {"off": [], "on": []}
    for r in range(rounds):
        for mode in (("off", "on") if r % 2 else ("on", "off")):
            start = time.perf_counter()
            result = train(config.resolve(overrides={**common, "profile": mode == "on", "name": f"{mode}-{r}"}), progress=False)
            wall[mode].append(time.perf_counter() - start)
            epoch_s[mode].append([row["seconds"] for row in result.history[1:]])  # epoch 1 holds the trace window
            if mode == "on":
                first_on = result.history[0]["seconds"]
            else:
                first_off = result.history[0]["seconds"]
    pairs = sorted(a / b for on_run, off_run in zip(epoch_s["on"], epoch_s["off"]) for a, b in zip(on_run, off_run))
    off = statistics.median(s for run in epoch_s["off"] for s in run)
    on = statistics.median(s for run in epoch_s["on"] for s in run)
    return {"epoch_off": off, "epoch_on": on, "ratio": statistics.median(pairs), "iqr": quartiles(pairs), "first_on": first_on, "first_off": first_off,
            "wall_off": statistics.median(wall["off"]), "wall_on": statistics.median(wall["on"]), "steps": 10}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=40, help="adjacent off/on epoch pairs on the head path")
    p.add_argument("--image-rounds", type=int, default=3, help="adjacent off/on training runs on images")
    p.add_argument("--image-epochs", type=int, default=3)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("dogbreed").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="dogbreed-profile-bench-") as tmp:
        os.environ.setdefault("DOGBREED_CACHE", str(Path(tmp) / "cache"))
        head = head_epochs(Path(tmp), args.rounds)
        image = image_runs(Path(tmp), args.image_epochs, args.image_rounds)

    print(f"\n## profile_bench ({machine.describe()}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu)\n")
    print("| measure | no profile | profile (defaults) | ratio: median of adjacent pairs (p25-p75) |\n|---|---|---|---|")
    print(f"| head path: train step, {head['steps']} steps/epoch, {args.rounds} epoch pairs | "
          f"{head['off_ms']:.3f} ms | {head['on_ms']:.3f} ms | **{head['ratio']:.3f}x** "
          f"({head['iqr'][0]:.3f}-{head['iqr'][1]:.3f}) |")
    print(f"| image path: epoch (resnet50 layer4, 10 steps + eval), epochs 2..{args.image_epochs} of "
          f"{args.image_rounds} run pairs | {image['epoch_off']:.2f} s | {image['epoch_on']:.2f} s | **{image['ratio']:.3f}x** "
          f"({image['iqr'][0]:.3f}-{image['iqr'][1]:.3f}) |")
    print(f"| image path: first epoch (holds the 5-step trace window) | {image['first_off']:.2f} s | {image['first_on']:.2f} s | "
          f"{image['first_on'] / image['first_off']:.3f}x |")
    print(f"| image path: whole `dogbreed train` run, {args.image_epochs} epochs (report included) | "
          f"{image['wall_off']:.1f} s | {image['wall_on']:.1f} s | {image['wall_on'] / image['wall_off']:.3f}x |")
    print(f"\none-off costs on the head path: trace window (5 steps, export) {head['trace_s']:.2f} s; "
          f"report (rules, HTML, PNG) {head['report_s']:.2f} s")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
