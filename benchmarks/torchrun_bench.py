"""Training past one process: 1 process against 2 torchrun ranks on both paths, and what a gradient
exchange costs, for projecting to more ranks.

- ``dogbreed train`` (frozen resnet50, cold cache) in one process with every core, then under
  ``torchrun --nproc-per-node 2`` (one core per rank) on a cold cache of its own: wall time, the
  embedding, the exchange of the shares;
- one image epoch (``--train-layers layer4``, DistributedDataParallel under torchrun) the same two
  ways: the epoch's seconds (train and valid) from metrics.csv;
- ``all_reduce`` over gloo between 2 processes on loopback of a resnet50's 25.6 M parameters, of
  what ``layer4`` trains and of the 133-way head's 272,517: the per-step communication.

On one 2-core machine little is to be gained: the 2 ranks share the cores one process used.

    python benchmarks/torchrun_bench.py [--classes 10 --per-class 40]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dogbreed import machine
from dogbreed.data.synth import synth

PARAMETERS = {"resnet50": 25_557_032, "layer4 + head": 14_964_736 + 272_517, "head (2048 x 133 + 133)": 272_517}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(command: list[str], out: Path, env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return seconds, json.loads((run / "results.json").read_text())["feature_cache"]


def epoch(command: list[str], out: Path, env: dict) -> tuple[float, float, float, int]:
    """One image epoch: the wall time, the epoch's seconds (train + valid, metrics.csv), rank 0's
    training steps' seconds (data wait + compute, DDP's gradient exchange included, from the
    profile) and the train images."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    row = next(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    steps = [json.loads(line) for line in open(run / "profile" / "steps.jsonl", encoding="utf-8")]
    train_s = sum(s["data"] + s["compute"] for s in steps if s["phase"] == "train" and s.get("rank", 0) == 0)
    images = len(list((Path(command[command.index("--data") + 1]) / "train").rglob("*.jpg")))
    return seconds, float(row["seconds"]), train_s, images


def _exchange(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for name, count in PARAMETERS.items():
        tensor = torch.randn(count)
        dist.all_reduce(tensor)  # warm-up
        times = []
        for _ in range(5):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - started)
        if rank == 0:
            results[name] = sorted(times)[len(times) // 2]
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch of the image epoch")
    args = p.parse_args()
    env = {**os.environ, "TQDM_DISABLE": "1", "GLOO_SOCKET_IFNAME": "lo"}

    with tempfile.TemporaryDirectory(prefix="dogbreed-torchrun-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, progress=False)
        flags = ["train", "--data", str(data), "--backbone", "resnet50", "--no-pretrained", "--image-size",
                 str(args.size), "--epochs", "9", "--no-progress", "--no-profile"]
        one = train([sys.executable, "-m", "dogbreed", *flags, "--out", str(tmp / "one"), "--cache-dir",
                     str(tmp / "cache-one")], tmp / "one", env)
        two = train([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                     "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dogbreed", *flags,
                     "--out", str(tmp / "two"), "--cache-dir", str(tmp / "cache-two")], tmp / "two",
                    {**env, "OMP_NUM_THREADS": "1"})
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                  "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dogbreed"]
        images = [*flags[:flags.index("--epochs")], "--epochs", "1", "--train-layers", "layer4", "--batch-size",
                  str(args.batch_size), "--no-progress"]  # profiled: the steps' times
        one_epoch = epoch([sys.executable, "-m", "dogbreed", *images, "--out", str(tmp / "e1")], tmp / "e1", env)
        two_epoch = epoch([*launch, *images, "--out", str(tmp / "e2")], tmp / "e2", {**env, "OMP_NUM_THREADS": "1"})
    results = mp.Manager().dict()
    mp.spawn(_exchange, args=(free_port(), results), nprocs=2, join=True)

    total = one[1]["images_embedded"]
    per_rank = two[1]["images_per_second"]  # rank 0's, on one core
    print(f"\n## torchrun_bench: frozen resnet50, {args.size} px, {args.classes} classes x {args.per_class} images, "
          f"cold cache, 9 epochs ({machine.describe()}, torch {torch.__version__})\n")
    print("| run | wall | embedding | img/s | exchange of the shares |\n|---|---|---|---|---|")
    print(f"| 1 process, {torch.get_num_threads()} threads | {one[0]:.1f} s | {one[1]['embed_seconds']:.1f} s, "
          f"{total} images | {one[1]['images_per_second']:.1f} | - |")
    print(f"| torchrun, 2 ranks x 1 thread | {two[0]:.1f} s | {two[1]['embed_seconds']:.1f} s, "
          f"{two[1]['images_embedded']} images on rank 0 | {per_rank:.1f} per rank | {two[1]['exchange_seconds']:.2f} s |")
    print("\n| all_reduce over gloo, 2 processes, loopback | median |\n|---|---|")
    for name, seconds in results.items():
        print(f"| {name}: {PARAMETERS[name] * 4 / 1e6:.1f} MB | {seconds * 1000:.1f} ms |")
    steps = -(-one_epoch[3] // args.batch_size)
    print(f"\nOne image epoch, --train-layers layer4, global batch {args.batch_size} ({one_epoch[3]} train images, "
          f"{steps} steps):\n\n| run | wall | epoch (train + valid) | training steps | train img/s |\n|---|---|---|---|---|")
    for name, (wall, seconds, train_s, n) in (("1 process", one_epoch), ("torchrun, 2 ranks x 1 thread (DDP)", two_epoch)):
        print(f"| {name} | {wall:.1f} s | {seconds:.1f} s | {train_s:.1f} s | {n / train_s:.1f} |")
    per_rank_images = two_epoch[3] / 2 / two_epoch[2]  # one rank's half of the epoch over its training steps' time
    comm = results["layer4 + head"]
    # Ring all-reduce moves 2(n-1)/n of the gradients per rank: 1.75x the 2-rank cost at 8. The 2-rank rate
    # already holds one exchange a step, so adding it again makes the projection a conservative one.
    step8 = (args.batch_size / 8) / per_rank_images + comm * 1.75
    print(f"\nprojection, 8 ranks of one core each on images: per step {args.batch_size // 8} images at "
          f"{per_rank_images:.1f} img/s a rank plus the layer4 gradients' all-reduce ({comm * 1000:.0f} ms on 2 ranks, "
          f"x1.75 at 8) = {step8:.2f} s a step, {steps * step8:.1f} s for the epoch's training steps "
          f"(1 process here: {one_epoch[2]:.1f} s)")
    print(f"\nprojection, 8 ranks of one core each at the measured {per_rank:.1f} img/s: {total} images embedded in "
          f"{total / (8 * per_rank):.1f} s (1 process here: {one[1]['embed_seconds']:.1f} s)")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
